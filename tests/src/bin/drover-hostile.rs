//! drover-hostile: what hostile callers can make a running gateway hold, and whether its
//! memory comes back once they stop.
//!
//! Runs scenarios one after another against a gateway's data plane (`--gateway`, loopback),
//! reading the gateway process's resident memory (`VmRSS` in `/proc/PID/status`, `--pid`)
//! every 50 ms. Before each scenario it waits until the gateway reports no open connection
//! (`drover_connections_open` in `/metrics`) and reads the idle RSS; after the load ends it
//! waits `--settle` seconds (10) and reads the RSS again. The peak is the highest sample from
//! the start of the load to that last reading.
//!
//! * `slowloris`: connections that send a request head one header line a second, and as many
//!   that send nothing, held for `--slowloris-hold` seconds: how many the gateway closes, when.
//! * `idle`: connections that make one request each and then idle: how many the gateway closes
//!   within `--idle-wait` seconds, when, and whether new requests are served meanwhile.
//! * `bodies`: connections that declare a large body and send all of it but its last byte,
//!   then hold: how many are refused early (503: the buffered-body budget), and the memory.
//! * `models`: after as many requests to the routed alias (a warm-up), requests with unique
//!   `PROVIDER/model` names, short ones and then long ones: the RSS each set of names leaves
//!   behind (the target is under 8 MiB for 10,000 names).
//! * `cap`: connections up to `--max-connections`, held, and a burst beyond it: how many of
//!   the burst are refused (503), and whether a normal request succeeds once they close.
//!
//! Prints a Markdown table (and the checks against the gateway's bounds) on stdout; progress
//! goes to stderr. `tests/bench/hostile.sh` builds and starts everything and runs it.
//!
//! ```text
//! drover-hostile --gateway http://127.0.0.1:8080 --pid 1234 --model bench-model --direct-provider mock
//! ```
#![allow(clippy::print_stdout, reason = "the report is this binary's output")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;
/// How far above its idle RSS the gateway may stay once a hostile load has ended.
const MEMORY_COMES_BACK: u64 = 64 * MIB;
/// How much 10,000 unique model names may add to the gateway's RSS.
const NAMES_TARGET: u64 = 8 * MIB;
/// Connections being opened at once (a loopback accept queue holds about a thousand).
const CONNECT_AT_ONCE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often RSS is sampled for the peak.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Measures the gateway's memory and answers under hostile load.
#[derive(Parser, Debug)]
#[command(name = "drover-hostile", version)]
struct Args {
    /// The data plane's HTTP address.
    #[arg(long)]
    gateway: String,
    /// Process id of the gateway, whose VmRSS is read.
    #[arg(long)]
    pid: u32,
    /// A routed model alias that answers.
    #[arg(long)]
    model: String,
    /// A configured provider, for direct `provider/model` names.
    #[arg(long)]
    direct_provider: String,
    /// The gateway's `--max-connections`.
    #[arg(long, default_value_t = 1_000)]
    max_connections: usize,
    /// The gateway's `--max-buffered-body-bytes`, in MiB (what the `bodies` scenario expects).
    #[arg(long, default_value_t = 256)]
    body_budget_mib: u64,
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "slowloris,idle,bodies,models,cap"
    )]
    scenarios: Vec<Scenario>,
    /// Seconds to wait after a load ends before reading RSS again.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// slowloris: connections sending a header line a second.
    #[arg(long, default_value_t = 500)]
    slow_connections: usize,
    /// slowloris: connections sending nothing.
    #[arg(long, default_value_t = 500)]
    silent_connections: usize,
    /// slowloris: seconds to hold the connections (unless the gateway closes them first).
    #[arg(long, default_value_t = 15)]
    slowloris_hold: u64,
    /// idle: keep-alive connections, one request each.
    #[arg(long, default_value_t = 2_000)]
    idle_connections: usize,
    /// idle: longest wait, in seconds, for the gateway to close them (its default idle
    /// timeout is 75 s).
    #[arg(long, default_value_t = 90)]
    idle_wait: u64,
    /// bodies: connections holding a body.
    #[arg(long, default_value_t = 20)]
    body_connections: usize,
    /// bodies: declared length of each body, in MiB (all but its last byte is sent).
    #[arg(long, default_value_t = 32)]
    body_mib: usize,
    /// bodies: seconds to hold the bodies once every connection is sent or refused.
    #[arg(long, default_value_t = 5)]
    body_hold: u64,
    /// models: requests with unique names, per kind of name.
    #[arg(long, default_value_t = 10_000)]
    model_requests: usize,
    /// models: requests in flight at once.
    #[arg(long, default_value_t = 32)]
    model_concurrency: usize,
    /// models: bytes of padding in each long name.
    #[arg(long, default_value_t = 10_240)]
    name_bytes: usize,
    /// cap: connections opened beyond `--max-connections`.
    #[arg(long, default_value_t = 100)]
    extra_connections: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Slowloris,
    Idle,
    Bodies,
    Models,
    Cap,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gateway = Gateway::new(&args).await?;
    let rss = Arc::new(Rss::new(args.pid)?);
    let sampler = tokio::spawn(sample(rss.clone()));
    let bench = Bench { args, gateway, rss };
    let mut rows = Vec::new();
    for scenario in bench.args.scenarios.clone() {
        match scenario {
            Scenario::Slowloris => rows.push(bench.slowloris().await?),
            Scenario::Idle => rows.push(bench.idle().await?),
            Scenario::Bodies => rows.push(bench.bodies().await?),
            Scenario::Models => {
                // Short names first, so that they are measured on a heap the long ones have not
                // grown.
                bench.warm_up().await?;
                rows.push(bench.models(Names::Short).await?);
                rows.push(bench.models(Names::Long).await?);
            }
            Scenario::Cap => rows.push(bench.cap().await?),
        }
    }
    sampler.abort();
    print!("{}", report(&rows, bench.args.settle));
    Ok(())
}

fn log(message: impl std::fmt::Display) {
    eprintln!("[hostile] {message}");
}

// ---- memory -------------------------------------------------------------------------------

/// The gateway's resident memory, and the highest sample since the last reset.
struct Rss {
    path: String,
    peak: AtomicU64,
}

impl Rss {
    fn new(pid: u32) -> anyhow::Result<Self> {
        let rss = Rss {
            path: format!("/proc/{pid}/status"),
            peak: AtomicU64::new(0),
        };
        rss.read()?;
        Ok(rss)
    }

    /// VmRSS now, in bytes.
    fn read(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {} (has the gateway exited?)", self.path))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no VmRSS in {}", self.path))?;
        Ok(kib * 1024)
    }

    /// Starts a new peak from the RSS now, which it returns.
    fn reset(&self) -> anyhow::Result<u64> {
        let now = self.read()?;
        self.peak.store(now, Ordering::Relaxed);
        Ok(now)
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

async fn sample(rss: Arc<Rss>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Ok(now) = rss.read() {
            rss.peak.fetch_max(now, Ordering::Relaxed);
        }
    }
}

// ---- the gateway --------------------------------------------------------------------------

/// Where the gateway listens, and what to ask it for.
#[derive(Clone)]
struct Gateway {
    addr: SocketAddr,
    host: String,
    model: String,
    provider: String,
}

type Client = SendRequest<Full<Bytes>>;

impl Gateway {
    async fn new(args: &Args) -> anyhow::Result<Self> {
        let uri: Uri = args.gateway.parse().context("--gateway is not a URL")?;
        if uri.scheme_str() != Some("http") {
            bail!("--gateway must be an http:// address");
        }
        let host = uri.authority().context("--gateway has no host")?.to_string();
        let addr = tokio::net::lookup_host(&host)
            .await?
            .next()
            .with_context(|| format!("{host} does not resolve"))?;
        Ok(Gateway {
            addr,
            host,
            model: args.model.clone(),
            provider: args.direct_provider.clone(),
        })
    }

    async fn tcp(&self) -> io::Result<TcpStream> {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr)).await {
            Ok(connected) => connected,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// An HTTP/1.1 client on a new connection.
    async fn client(&self) -> anyhow::Result<Client> {
        let tcp = self.tcp().await?;
        let (client, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A small chat completion for `model`.
    fn chat(&self, model: &str) -> anyhow::Result<Request<Full<Bytes>>> {
        let body = json!({
            "model": model,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello."}],
        });
        Ok(Request::post("/v1/chat/completions")
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, "Bearer hostile")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?)
    }

    /// Sends `request` and reads the whole answer; its status.
    async fn send(client: &mut Client, request: Request<Full<Bytes>>) -> anyhow::Result<u16> {
        let answer = timeout(ANSWER_TIMEOUT, async {
            client.ready().await?;
            let response = client.send_request(request).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        })
        .await;
        answer.map_err(|_| anyhow::anyhow!("no answer in {ANSWER_TIMEOUT:?}"))?
    }

    /// One chat completion to the routed alias, on a new connection; its status.
    async fn chat_once(&self) -> anyhow::Result<u16> {
        let mut client = self.client().await?;
        Gateway::send(&mut client, self.chat(&self.model)?).await
    }

    /// A value from `/metrics` (on a new connection).
    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let mut client = self.client().await?;
        let request = Request::get("/metrics")
            .header(HOST, &self.host)
            .body(Full::new(Bytes::new()))?;
        let response = timeout(ANSWER_TIMEOUT, async {
            let response = client.send_request(request).await?;
            anyhow::Ok(response.into_body().collect().await?.to_bytes())
        })
        .await
        .map_err(|_| anyhow::anyhow!("/metrics did not answer"))??;
        let text = String::from_utf8_lossy(&response);
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in /metrics"))
    }

    /// The head of a `GET /healthz` on a keep-alive connection.
    fn healthz(&self) -> String {
        format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", self.host)
    }
}

/// Reads one HTTP/1.1 answer (its head, then a body of its `content-length`); its status, or
/// `None` if the connection closed first.
async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<u16>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "answer head too long"));
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = parse_status(head.as_bytes())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/1.1 answer"))?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(buf.len() - end);
    while left > 0 {
        let take = left.min(chunk.len());
        let n = r.read(&mut chunk[..take]).await?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    Ok(Some(status))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.get(..12)?).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Waits until the peer closes the connection (end of stream or reset), discarding what it
/// sends; the status of an answer it sent first, if any.
async fn until_closed<R: AsyncRead + Unpin>(r: &mut R) -> Option<u16> {
    let mut first = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return parse_status(&first),
            Ok(n) if first.len() < 16 => first.extend_from_slice(&chunk[..n]),
            Ok(_) => {}
        }
    }
}

// ---- counting -----------------------------------------------------------------------------

/// Outcomes by name ("200", "503", "closed", …).
#[derive(Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn add(&mut self, outcome: impl Into<String>) {
        *self.0.entry(outcome.into()).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.0 {
            *self.0.entry(k).or_default() += v;
        }
    }

    fn get(&self, outcome: &str) -> usize {
        self.0.get(outcome).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

fn status_or_error(answer: anyhow::Result<u16>) -> String {
    match answer {
        Ok(status) => status.to_string(),
        Err(_) => "error".to_owned(),
    }
}

/// "min–max s, median m s" of some durations.
fn spread(times: &mut [Duration]) -> String {
    if times.is_empty() {
        return "-".to_owned();
    }
    times.sort();
    let (min, max) = (times[0], times[times.len() - 1]);
    let median = times[times.len() / 2];
    format!(
        "{:.1}–{:.1} s, median {:.1} s",
        min.as_secs_f64(),
        max.as_secs_f64(),
        median.as_secs_f64()
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn signed_mib(after: u64, before: u64) -> String {
    let diff = after as f64 - before as f64;
    format!("{:+.1} MiB", diff / MIB as f64)
}

/// Chat completions to the routed alias, one a second on a new connection each, until
/// stopped: whether the gateway still serves others while under a load.
struct Probes {
    stop: CancellationToken,
    task: JoinHandle<Tally>,
}

impl Probes {
    fn start(gateway: &Gateway) -> Self {
        let stop = CancellationToken::new();
        let (gateway, stopped) = (gateway.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return tally,
                    _ = tick.tick() => {}
                }
                tokio::select! {
                    () = stopped.cancelled() => return tally,
                    answer = gateway.chat_once() => tally.add(status_or_error(answer)),
                }
            }
        });
        Probes { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Tally> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

/// Times this network namespace's TCP listen queues overflowed (`ListenOverflows` in
/// `/proc/net/netstat`): connections the kernel completed faster than their server accepted
/// them, which then wait for the client's next packet.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// A note on listen-queue overflows since `before`, if there were any.
fn overflows_since(before: Option<u64>) -> String {
    match (before, listen_overflows()) {
        (Some(before), Some(now)) if now > before => format!(
            "; the kernel's listen queue overflowed {} times (connections not yet accepted)",
            now - before
        ),
        _ => String::new(),
    }
}

fn probes_line(probes: &Tally) -> String {
    format!(
        "requests meanwhile: {}/{} answered 200 ({probes})",
        probes.get("200"),
        probes.total()
    )
}

/// The check that other requests were served while a scenario ran.
fn probes_check(probes: &Tally) -> Check {
    check(
        probes.get("200") == probes.total() && probes.total() > 0,
        probes_line(probes),
    )
}

// ---- the report ---------------------------------------------------------------------------

/// One line of the report.
struct Row {
    scenario: String,
    idle: u64,
    peak: u64,
    after: u64,
    outcome: String,
    checks: Vec<Check>,
}

/// Whether one bound held.
struct Check {
    ok: bool,
    what: String,
}

fn check(ok: bool, what: impl Into<String>) -> Check {
    Check {
        ok,
        what: what.into(),
    }
}

fn report(rows: &[Row], settle: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | idle RSS | peak RSS | RSS {settle} s after | outcome |\n|---|---:|---:|---:|---|"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} |",
            row.scenario,
            mib(row.idle),
            mib(row.peak),
            mib(row.after),
            signed_mib(row.after, row.idle),
            row.outcome
        );
    }
    // The run as one long hostile load: from the idle RSS before the first scenario to the
    // RSS after the last.
    let whole = rows.first().zip(rows.last()).map(|(first, last)| {
        check(
            last.after <= first.idle + MEMORY_COMES_BACK,
            format!(
                "RSS {settle} s after the last load within 64 MiB of idle before the first \
                 ({} → {}, {})",
                mib(first.idle),
                mib(last.after),
                signed_mib(last.after, first.idle)
            ),
        )
    });
    let failed = rows
        .iter()
        .flat_map(|r| &r.checks)
        .chain(&whole)
        .filter(|c| !c.ok)
        .count();
    let _ = writeln!(
        out,
        "\nBounds ({}):\n",
        if failed == 0 {
            "all held".to_owned()
        } else {
            format!("{failed} did not hold")
        }
    );
    for row in rows {
        for c in &row.checks {
            let mark = if c.ok { "held" } else { "**NOT HELD**" };
            let _ = writeln!(out, "- {}: {mark}: {}", row.scenario, c.what);
        }
    }
    if let Some(c) = whole {
        let mark = if c.ok { "held" } else { "**NOT HELD**" };
        let _ = writeln!(out, "- the whole run: {mark}: {}", c.what);
    }
    out
}

// ---- the scenarios ------------------------------------------------------------------------

struct Bench {
    args: Args,
    gateway: Gateway,
    rss: Arc<Rss>,
}

/// What became of one connection held open.
enum End {
    /// The gateway closed it, this long after it was opened (or went idle); with the status
    /// of an answer it sent first, if any.
    Closed(Duration, Option<u16>),
    /// Still open when the scenario let go of it.
    Open,
    /// Refused or failed before the hold began (a status, or what went wrong).
    Failed(String),
}

impl Bench {
    /// Waits until the gateway has no connection open but ours to `/metrics`, then starts a
    /// new peak; the idle RSS.
    async fn begin(&self, name: &str) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.gateway.metric("drover_connections_open").await {
                Ok(open) if open <= 1.0 => break,
                Ok(open) if Instant::now() >= deadline => {
                    log(format!("{name}: {open} connections still open; starting anyway"));
                    break;
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                _ => sleep(Duration::from_millis(200)).await,
            }
        }
        let idle = self.rss.reset()?;
        log(format!("{name}: idle RSS {}", mib(idle)));
        Ok(idle)
    }

    /// Waits `--settle` seconds after a load ended and makes its row.
    async fn finish(
        &self,
        scenario: String,
        idle: u64,
        outcome: String,
        mut checks: Vec<Check>,
    ) -> anyhow::Result<Row> {
        sleep(Duration::from_secs(self.args.settle)).await;
        let after = self.rss.read()?;
        let peak = self.rss.peak().max(after);
        checks.push(check(
            after <= idle + MEMORY_COMES_BACK,
            format!(
                "RSS {} s after the load within 64 MiB of idle ({})",
                self.args.settle,
                signed_mib(after, idle)
            ),
        ));
        log(format!(
            "{scenario}: peak {}, {} after: {}; {outcome}",
            mib(peak),
            self.args.settle,
            mib(after)
        ));
        Ok(Row {
            scenario,
            idle,
            peak,
            after,
            outcome,
            checks,
        })
    }

    /// Slowloris: request heads a line a second, and connections that send nothing.
    async fn slowloris(&self) -> anyhow::Result<Row> {
        let a = &self.args;
        let name = format!(
            "slowloris: {} slow heads, {} silent",
            a.slow_connections, a.silent_connections
        );
        let idle = self.begin(&name).await?;
        let hold = Duration::from_secs(a.slowloris_hold);
        let overflows = listen_overflows();
        let gate = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
        let mut set = JoinSet::new();
        for (slow, count) in [(true, a.slow_connections), (false, a.silent_connections)] {
            for _ in 0..count {
                let (gateway, gate) = (self.gateway.clone(), gate.clone());
                set.spawn(async move { (slow, hold_head(&gateway, &gate, hold, slow).await) });
            }
        }
        let probes = Probes::start(&self.gateway);
        let (mut slow, mut silent) = (Held::default(), Held::default());
        while let Some(joined) = set.join_next().await {
            let (is_slow, end) = joined?;
            let held = if is_slow { &mut slow } else { &mut silent };
            held.add(end);
        }
        let probes = probes.finish().await?;
        let outcome = format!(
            "slow heads: {}; silent: {}; {}{}",
            slow.describe(a.slow_connections, "after connecting"),
            silent.describe(a.silent_connections, "after connecting"),
            probes_line(&probes),
            overflows_since(overflows)
        );
        let checks = vec![
            check(
                slow.closed.len() == a.slow_connections && silent.closed.len() == a.silent_connections,
                format!(
                    "every slow or silent connection closed by the gateway within {} s of opening ({}/{})",
                    a.slowloris_hold,
                    slow.closed.len() + silent.closed.len(),
                    a.slow_connections + a.silent_connections
                ),
            ),
            probes_check(&probes),
        ];
        self.finish(name, idle, outcome, checks).await
    }

    /// Keep-alive connections that make one request and then idle.
    async fn idle(&self) -> anyhow::Result<Row> {
        let a = &self.args;
        let name = format!("idle keep-alive: {} connections", a.idle_connections);
        let idle = self.begin(&name).await?;
        let started = Instant::now();
        let wait = Duration::from_secs(a.idle_wait);
        let overflows = listen_overflows();
        let gate = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
        let ready = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for _ in 0..a.idle_connections {
            let (gateway, gate, ready) = (self.gateway.clone(), gate.clone(), ready.clone());
            set.spawn(async move { idle_after_request(&gateway, &gate, &ready, wait).await });
        }
        let all_ready = Instant::now() + Duration::from_secs(60);
        while ready.load(Ordering::Relaxed) < a.idle_connections && Instant::now() < all_ready {
            sleep(Duration::from_millis(50)).await;
        }
        // Less the connection that asks.
        let open = self
            .gateway
            .metric("drover_connections_open")
            .await
            .ok()
            .map(|open| open - 1.0);
        log(format!(
            "{name}: {} requests answered in {:.1} s; the gateway counts {} others open",
            ready.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
            open.map_or_else(|| "?".to_owned(), |o| o.to_string())
        ));
        let probes = Probes::start(&self.gateway);
        let mut held = Held::default();
        while let Some(joined) = set.join_next().await {
            held.add(joined?);
        }
        let probes = probes.finish().await?;
        let waited = started.elapsed();
        let served = a.idle_connections - held.failed.total();
        let outcome = format!(
            "{served} served then idle (the gateway counted {} open); {}; waited {:.0} s; {}{}",
            open.map_or_else(|| "?".to_owned(), |o| format!("{o:.0}")),
            held.describe(served, "idle"),
            waited.as_secs_f64(),
            probes_line(&probes),
            overflows_since(overflows)
        );
        let checks = vec![
            check(
                held.closed.len() == served,
                format!(
                    "every idle connection closed by the gateway within {} s of its request ({}/{served})",
                    a.idle_wait,
                    held.closed.len()
                ),
            ),
            probes_check(&probes),
        ];
        self.finish(name, idle, outcome, checks).await
    }

    /// Connections each declaring a large body and sending all of it but its last byte.
    async fn bodies(&self) -> anyhow::Result<Row> {
        let a = &self.args;
        let name = format!(
            "held bodies: {} × {} MiB declared, 1 byte short",
            a.body_connections, a.body_mib
        );
        let body = json_body(&self.gateway.model, a.body_mib << 20)?;
        let idle = self.begin(&name).await?;
        let settled = Arc::new(AtomicUsize::new(0));
        let release = CancellationToken::new();
        let mut set = JoinSet::new();
        for _ in 0..a.body_connections {
            let (gateway, body, settled, release) = (
                self.gateway.clone(),
                body.clone(),
                settled.clone(),
                release.clone(),
            );
            set.spawn(async move { hold_body(&gateway, body, &settled, &release).await });
        }
        let all_settled = Instant::now() + Duration::from_secs(120);
        while settled.load(Ordering::Relaxed) < a.body_connections && Instant::now() < all_settled {
            sleep(Duration::from_millis(50)).await;
        }
        let buffered = self
            .gateway
            .metric("drover_request_body_bytes_buffered")
            .await
            .ok();
        let probes = Probes::start(&self.gateway);
        sleep(Duration::from_secs(a.body_hold)).await;
        let probes = probes.finish().await?;
        release.cancel();
        let mut early = Tally::default();
        let mut early_after = Vec::new();
        let mut sent = Tally::default();
        while let Some(joined) = set.join_next().await {
            match joined? {
                BodyEnd::Early(status, after) => {
                    early.add(status.map_or_else(|| "closed".to_owned(), |s| s.to_string()));
                    early_after.push(after);
                }
                BodyEnd::Sent(None) => sent.add("held"),
                BodyEnd::Sent(Some(late)) => sent.add(format!("{late} before release")),
                BodyEnd::Failed(e) => early.add(e),
            }
        }
        // The gateway's own rule: large bodies leave part of the budget to small ones.
        let body_bytes = a.body_mib << 20;
        let budget = usize::try_from(a.body_budget_mib << 20).unwrap_or(usize::MAX);
        let fit = drover_dataplane::room_for(budget, body_bytes) / body_bytes.max(1);
        let held = sent.get("held");
        let outcome = format!(
            "answered before the body was sent: {early} ({}); sent to the last byte but one: {sent}; \
             gateway buffered {} (/metrics); {}",
            spread(&mut early_after),
            buffered.map_or_else(|| "?".to_owned(), |b| mib(b as u64)),
            probes_line(&probes)
        );
        let checks = vec![
            check(
                held <= fit,
                format!(
                    "at most {fit} bodies of {} MiB held within the {} MiB budget, seven eighths of it for bodies over 1 MiB ({held} held)",
                    a.body_mib, a.body_budget_mib
                ),
            ),
            check(
                early.get("503") == a.body_connections.saturating_sub(fit),
                format!(
                    "the rest refused early with 503 ({} of {})",
                    early.get("503"),
                    a.body_connections.saturating_sub(fit)
                ),
            ),
        ];
        self.finish(name, idle, outcome, checks).await
    }

    /// Requests with unique `provider/model` names.
    async fn models(&self, names: Names) -> anyhow::Result<Row> {
        let a = &self.args;
        let name = match names {
            Names::Long => format!(
                "unique model names: {} × {} KiB",
                a.model_requests,
                a.name_bytes / 1024
            ),
            Names::Short => format!("unique model names: {} short", a.model_requests),
            Names::Alias => format!("the routed alias: {} requests", a.model_requests),
        };
        let idle = self.begin(&name).await?;
        let (tally, elapsed) = self.chats(names).await?;
        let outcome = format!(
            "{tally} in {:.1} s ({:.0} req/s, concurrency {})",
            elapsed.as_secs_f64(),
            a.model_requests as f64 / elapsed.as_secs_f64(),
            a.model_concurrency
        );
        let mut row = self.finish(name, idle, outcome, Vec::new()).await?;
        let target = NAMES_TARGET * a.model_requests as u64 / 10_000;
        row.checks.insert(
            0,
            check(
                row.after <= idle + target,
                format!(
                    "{} unique names add under {} of RSS ({})",
                    a.model_requests,
                    mib(target),
                    signed_mib(row.after, idle)
                ),
            ),
        );
        Ok(row)
    }

    /// As many requests to the routed alias as a `models` pass sends, so that what the first
    /// pass measures is its names, not the gateway's first busy moment (worker arenas, the
    /// upstream connection pool).
    async fn warm_up(&self) -> anyhow::Result<()> {
        let (tally, elapsed) = self.chats(Names::Alias).await?;
        log(format!(
            "warm-up: {tally} to {} in {:.1} s",
            self.gateway.model,
            elapsed.as_secs_f64()
        ));
        Ok(())
    }

    /// `--model-requests` chat completions, `--model-concurrency` at a time, named by `names`.
    async fn chats(&self, names: Names) -> anyhow::Result<(Tally, Duration)> {
        let a = &self.args;
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for _ in 0..a.model_concurrency.max(1) {
            let (gateway, next) = (self.gateway.clone(), next.clone());
            let (total, pad) = (a.model_requests, a.name_bytes);
            set.spawn(async move {
                let mut tally = Tally::default();
                let mut client: Option<Client> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return tally;
                    }
                    let model = names.name(&gateway, i, pad);
                    tally.add(status_or_error(
                        send_reconnecting(&gateway, &mut client, &model).await,
                    ));
                }
            });
        }
        let mut tally = Tally::default();
        while let Some(joined) = set.join_next().await {
            tally.merge(joined?);
        }
        Ok((tally, started.elapsed()))
    }

    /// Connections up to the cap, held, then a burst beyond it.
    async fn cap(&self) -> anyhow::Result<Row> {
        let a = &self.args;
        let name = format!(
            "connection cap: {} held + {} more",
            a.max_connections, a.extra_connections
        );
        let idle = self.begin(&name).await?;
        let overflows = listen_overflows();
        let gate = Arc::new(Semaphore::new(CONNECT_AT_ONCE));
        let mut set = JoinSet::new();
        for _ in 0..a.max_connections {
            let (gateway, gate) = (self.gateway.clone(), gate.clone());
            set.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let mut tcp = gateway.tcp().await?;
                tcp.write_all(gateway.healthz().as_bytes()).await?;
                let status = timeout(ANSWER_TIMEOUT, read_answer(&mut tcp))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                io::Result::Ok((status, tcp))
            });
        }
        let mut held = Vec::with_capacity(a.max_connections);
        let mut first = Tally::default();
        while let Some(joined) = set.join_next().await {
            match joined? {
                Ok((Some(200), tcp)) => {
                    first.add("200");
                    held.push(tcp);
                }
                Ok((Some(status), _)) => first.add(status.to_string()),
                Ok((None, _)) => first.add("closed"),
                Err(e) => first.add(format!("error: {}", e.kind())),
            }
        }
        log(format!("{name}: {} connections held ({first})", held.len()));
        let mut extra = JoinSet::new();
        for _ in 0..a.extra_connections {
            let gateway = self.gateway.clone();
            extra.spawn(async move {
                let mut tcp = match gateway.tcp().await {
                    Ok(tcp) => tcp,
                    Err(e) => return format!("error: {}", e.kind()),
                };
                // A refusal may close before the request is written; its answer is read anyway.
                let _ = tcp.write_all(gateway.healthz().as_bytes()).await;
                match timeout(Duration::from_secs(10), read_answer(&mut tcp)).await {
                    Ok(Ok(Some(status))) => status.to_string(),
                    Ok(Ok(None)) | Ok(Err(_)) => "closed unanswered".to_owned(),
                    Err(_) => "no answer in 10 s".to_owned(),
                }
            });
        }
        let mut extras = Tally::default();
        while let Some(joined) = extra.join_next().await {
            extras.add(joined?);
        }
        let held_count = held.len();
        drop(held);
        let closed = Instant::now();
        let mut after_close = Tally::default();
        let recovered = loop {
            let answer = self.gateway.chat_once().await;
            let ok = matches!(answer, Ok(200));
            after_close.add(status_or_error(answer));
            if ok {
                break Some(closed.elapsed());
            }
            if closed.elapsed() > Duration::from_secs(15) {
                break None;
            }
            sleep(Duration::from_millis(100)).await;
        };
        let recovered_line = recovered.map_or_else(
            || format!("no request succeeded within 15 s of closing them ({after_close})"),
            |t| {
                format!(
                    "a chat completion succeeded {} ms after closing them",
                    t.as_millis()
                )
            },
        );
        let outcome = format!(
            "held: {held_count} ({first}); beyond the cap, {} at once: {extras}; {recovered_line}{}",
            a.extra_connections,
            overflows_since(overflows)
        );
        let checks = vec![
            check(
                extras.get("200") == 0,
                format!("no connection beyond the cap served ({extras})"),
            ),
            check(
                extras.get("503") + extras.get("closed unanswered") == a.extra_connections,
                format!(
                    "every connection beyond the cap refused at once, with a 503 or closed ({}/{})",
                    extras.get("503") + extras.get("closed unanswered"),
                    a.extra_connections
                ),
            ),
            check(recovered.is_some(), recovered_line),
        ];
        self.finish(name, idle, outcome, checks).await
    }
}

/// What became of the connections of one kind.
#[derive(Default)]
struct Held {
    closed: Vec<Duration>,
    /// Statuses of answers sent before closing.
    answered: Tally,
    open: usize,
    failed: Tally,
}

impl Held {
    fn add(&mut self, end: End) {
        match end {
            End::Closed(after, status) => {
                self.closed.push(after);
                if let Some(status) = status {
                    self.answered.add(status.to_string());
                }
            }
            End::Open => self.open += 1,
            End::Failed(why) => self.failed.add(why),
        }
    }

    fn describe(&mut self, of: usize, since: &str) -> String {
        let mut line = format!(
            "{}/{of} closed by the gateway ({} {since})",
            self.closed.len(),
            spread(&mut self.closed)
        );
        if self.answered.total() > 0 {
            let _ = write!(line, ", answered first: {}", self.answered);
        }
        let _ = write!(line, ", {} still open", self.open);
        if self.failed.total() > 0 {
            let _ = write!(line, ", failed: {}", self.failed);
        }
        line
    }
}

/// Opens a connection and holds it for `hold`: sending a request head a line a second when
/// `slow`, nothing otherwise.
async fn hold_head(gateway: &Gateway, gate: &Semaphore, hold: Duration, slow: bool) -> End {
    let tcp = {
        let _permit = gate.acquire().await;
        match gateway.tcp().await {
            Ok(tcp) => tcp,
            Err(e) => return End::Failed(format!("connect: {}", e.kind())),
        }
    };
    let opened = Instant::now();
    let deadline = opened + hold;
    let (mut rd, mut wr) = tcp.into_split();
    let writer = async {
        if slow {
            let mut line = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\n", gateway.host);
            for n in 0.. {
                if wr.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                sleep(Duration::from_secs(1)).await;
                line = format!("x-slow-{n}: {}\r\n", "a".repeat(32));
            }
        }
        std::future::pending::<End>().await
    };
    tokio::select! {
        status = until_closed(&mut rd) => End::Closed(opened.elapsed(), status),
        end = writer => end,
        () = sleep_until(deadline) => End::Open,
    }
}

/// Opens a keep-alive connection, makes one request and then idles until the gateway closes
/// it, for at most `wait`.
async fn idle_after_request(gateway: &Gateway, gate: &Semaphore, ready: &AtomicUsize, wait: Duration) -> End {
    let answered = async {
        let _permit = gate.acquire().await;
        let mut tcp = gateway.tcp().await?;
        tcp.write_all(gateway.healthz().as_bytes()).await?;
        let status = timeout(ANSWER_TIMEOUT, read_answer(&mut tcp))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        io::Result::Ok((status, tcp))
    }
    .await;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut tcp = match answered {
        Ok((Some(200), tcp)) => tcp,
        Ok((Some(status), _)) => return End::Failed(status.to_string()),
        Ok((None, _)) => return End::Failed("closed".to_owned()),
        Err(e) => return End::Failed(format!("error: {}", e.kind())),
    };
    let idle_since = Instant::now();
    tokio::select! {
        status = until_closed(&mut tcp) => End::Closed(idle_since.elapsed(), status),
        () = sleep_until(idle_since + wait) => End::Open,
    }
}

/// What became of one connection sending a large body.
enum BodyEnd {
    /// Answered (or closed, `None`) before the body was sent, this long after connecting.
    Early(Option<u16>, Duration),
    /// The body was sent but its last byte; with what the gateway did before release (a
    /// status, or "closed"), if anything.
    Sent(Option<String>),
    Failed(String),
}

/// A chat request of exactly `len` bytes: the user message is padding.
fn json_body(model: &str, len: usize) -> anyhow::Result<Bytes> {
    let head = format!(
        r#"{{"model":{},"messages":[{{"role":"user","content":""#,
        serde_json::to_string(model)?
    );
    let tail = r#""}]}"#;
    let pad = len
        .checked_sub(head.len() + tail.len())
        .context("the body is too small for its JSON")?;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + pad, b'x');
    body.extend_from_slice(tail.as_bytes());
    Ok(Bytes::from(body))
}

/// Declares `body`'s length, sends all of it but its last byte, and holds the connection
/// until `release`.
async fn hold_body(
    gateway: &Gateway,
    body: Bytes,
    settled: &AtomicUsize,
    release: &CancellationToken,
) -> BodyEnd {
    let tcp = match gateway.tcp().await {
        Ok(tcp) => tcp,
        Err(e) => {
            settled.fetch_add(1, Ordering::Relaxed);
            return BodyEnd::Failed(format!("connect: {}", e.kind()));
        }
    };
    let opened = Instant::now();
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         authorization: Bearer hostile\r\ncontent-length: {}\r\n\r\n",
        gateway.host,
        body.len()
    );
    let send = async {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&body[..body.len() - 1]).await
    };
    let early = tokio::select! {
        answer = read_answer(&mut rd) => Some(answer.ok().flatten()),
        sent = send => match sent {
            Ok(()) => None,
            // The gateway stopped reading: take the answer it sent, if any.
            Err(_) => Some(
                timeout(Duration::from_secs(1), read_answer(&mut rd))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
            ),
        },
    };
    settled.fetch_add(1, Ordering::Relaxed);
    if let Some(status) = early {
        return BodyEnd::Early(status, opened.elapsed());
    }
    tokio::select! {
        answer = read_answer(&mut rd) => BodyEnd::Sent(Some(
            answer.ok().flatten().map_or_else(|| "closed".to_owned(), |s| s.to_string()),
        )),
        () = release.cancelled() => BodyEnd::Sent(None),
    }
}

/// The model names requests are sent with.
#[derive(Clone, Copy)]
enum Names {
    /// `PROVIDER/model-<i>-<pad bytes of x>`.
    Long,
    /// `PROVIDER/short-<i>`.
    Short,
    /// The routed alias, every time.
    Alias,
}

impl Names {
    fn name(self, gateway: &Gateway, i: usize, pad: usize) -> String {
        let provider = &gateway.provider;
        match self {
            Names::Long => format!("{provider}/model-{i}-{}", "x".repeat(pad)),
            Names::Short => format!("{provider}/short-{i}"),
            Names::Alias => gateway.model.clone(),
        }
    }
}

/// Sends a chat completion for `model` on `client`, connecting (again) when there is no
/// usable connection; its status.
async fn send_reconnecting(
    gateway: &Gateway,
    client: &mut Option<Client>,
    model: &str,
) -> anyhow::Result<u16> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(gateway.client().await?);
    }
    let Some(c) = client.as_mut() else {
        bail!("no connection");
    };
    let answer = Gateway::send(c, gateway.chat(model)?).await;
    if answer.is_err() {
        *client = None;
    }
    answer
}
