//! drover-ingest-bench: how many usage records per second one control plane ingests.
//!
//! Starts a control plane in this process on a fresh database in a temporary directory, then
//! sends `--records` usage records in batches of `--batch` over gRPC (`UsageService.Report`,
//! loopback, the data plane token) from `--senders` concurrent tasks, each on its own
//! connection, as that many data planes would. Batches are built before the clock starts.
//! Prints records/s and the batch round-trip p50/p99, then checks through `QueryUsage` that
//! the ledger holds exactly what was sent. With `--resend`, sends everything a second time
//! and reports how fast duplicates are recognised (every record must come back a duplicate).
//!
//! ```text
//! cargo run --release -p drover-tests --bin drover-ingest-bench -- --records 200000 --batch 500
//! ```
#![allow(clippy::print_stdout, reason = "the measurement is this binary's output")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use drover_controlplane::{Config, ControlPlane};
use drover_proto::limits::{MAX_USAGE_BATCH, MAX_USAGE_MESSAGE_BYTES};
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "bench-admin-token";
const DATAPLANE_TOKEN: &str = "bench-dataplane-token";

/// Measures usage ingestion into one in-process control plane.
#[derive(Parser, Debug)]
#[command(name = "drover-ingest-bench", version)]
struct Args {
    /// Usage records to send in all.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Records per batch (one `Report` call).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent senders, each with its own connection (as separate data planes).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Afterwards, send everything again and measure how fast duplicates are recognised.
    #[arg(long)]
    resend: bool,
}

/// A 64-bit mix (splitmix64), for ids and values that look random but are reproducible.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Record `i` of `n`: one of 10 tenants, 100 keys and 5 models, arriving in order over the
/// last `n` ms with up to 2 s of jitter (a data plane reports what it served in the last
/// moments), with a request id as a data plane makes them: its millisecond, then 80 random bits.
fn record(i: u64, n: u64, now_ms: i64) -> pb::UsageRecord {
    const MODELS: [(&str, &str); 5] = [
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("gemini", "gemini-2.5-flash"),
    ];
    let r = mix(i);
    let (provider, model) = MODELS[(r % 5) as usize];
    let key = (r >> 8) % 100;
    let input = 200 + (r >> 16) % 4000;
    let output = 20 + (r >> 28) % 800;
    let time_unix_ms = now_ms - (n - i) as i64 - ((r >> 40) % 2_000) as i64;
    pb::UsageRecord {
        request_id: format!("req_{time_unix_ms:012x}{:04x}{:016x}", r & 0xffff, mix(r)),
        time_unix_ms,
        tenant: format!("tenant-{}", key % 10),
        key_id: format!("key-{key:03}"),
        alias: model.to_owned(),
        provider: provider.to_owned(),
        model: model.to_owned(),
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: input / 4,
        cost_nano_usd: (input * 150 + output * 600) as i64,
        latency_ms: 300 + (r % 2000) as u32,
        ttft_ms: 100 + (r % 300) as u32,
        status: 200,
        policy_version: 7,
        stream: r.is_multiple_of(2),
        endpoint: "/v1/chat/completions".to_owned(),
        ..Default::default()
    }
}

fn authed<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn connect(url: &str) -> anyhow::Result<UsageServiceClient<Channel>> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    Ok(UsageServiceClient::new(channel)
        .max_encoding_message_size(MAX_USAGE_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_USAGE_MESSAGE_BYTES))
}

/// What one pass over all batches measured.
struct Pass {
    elapsed: Duration,
    /// CPU time this process used meanwhile (control plane and senders), if known.
    cpu: Option<Duration>,
    latencies: Vec<Duration>,
    applied: u64,
    duplicates: u64,
}

/// Sends every batch once, `senders` at a time.
async fn send_all(url: &str, batches: &Arc<Vec<pb::UsageBatch>>, senders: usize) -> anyhow::Result<Pass> {
    let mut clients = Vec::with_capacity(senders);
    for _ in 0..senders {
        clients.push(connect(url).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let (next, batches) = (next.clone(), batches.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut applied, mut duplicates) = (0u64, 0u64);
                while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let sent = Instant::now();
                    let ack = client
                        .report(authed(batch.clone(), DATAPLANE_TOKEN)?)
                        .await
                        .context("Report failed")?
                        .into_inner();
                    latencies.push(sent.elapsed());
                    applied += u64::from(ack.applied);
                    duplicates += u64::from(ack.duplicates);
                }
                anyhow::Ok((latencies, applied, duplicates))
            })
        })
        .collect();
    let mut pass = Pass {
        elapsed: Duration::ZERO,
        cpu: None,
        latencies: Vec::new(),
        applied: 0,
        duplicates: 0,
    };
    for task in tasks {
        let (latencies, applied, duplicates) = task.await??;
        pass.latencies.extend(latencies);
        pass.applied += applied;
        pass.duplicates += duplicates;
    }
    pass.elapsed = started.elapsed();
    pass.cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    pass.latencies.sort();
    Ok(pass)
}

/// User and system CPU time of this process so far (Linux: `/proc/self/stat`, in clock ticks
/// of 10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn report(what: &str, records: usize, batch: usize, senders: usize, pass: &Pass) {
    let rate = records as f64 / pass.elapsed.as_secs_f64();
    let cpu = pass.cpu.map_or_else(String::new, |cpu| {
        format!(
            "; CPU {:.2} µs/record (control plane and senders)",
            cpu.as_secs_f64() * 1e6 / records as f64
        )
    });
    println!(
        "{what}: {records} records in {:.2} s = {rate:.0} records/s ({batch}/batch, {senders} senders); \
         batch round trip p50 {:.1} ms, p99 {:.1} ms{cpu}",
        pass.elapsed.as_secs_f64(),
        percentile(&pass.latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&pass.latencies, 0.99).as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.batch > MAX_USAGE_BATCH {
        bail!("--batch must be 1..={MAX_USAGE_BATCH}");
    }
    ensure!(
        args.senders > 0 && args.records > 0,
        "--senders and --records must be positive"
    );

    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let config = Config {
        db_path: dir.path().join("drover.db"),
        grpc_addr: "127.0.0.1:0".parse()?,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        dataplane_token: Some(DATAPLANE_TOKEN.to_owned()),
        master_key: None,
        usage_retention: None,
        audit_retention: None,
        tls: None,
        handshake_timeout: drover_controlplane::DEFAULT_HANDSHAKE_TIMEOUT,
        leases: drover_controlplane::LeaseTiming::default(),
    };
    let cp = ControlPlane::start(config, shutdown.clone()).await?;
    let url = format!("http://{}", cp.grpc_addr());

    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let records: Vec<pb::UsageRecord> = (0..args.records as u64)
        .map(|i| record(i, args.records as u64, now_ms))
        .collect();
    let expected_cost: i64 = records.iter().map(|r| r.cost_nano_usd).sum();
    let batches: Arc<Vec<pb::UsageBatch>> = Arc::new(
        records
            .chunks(args.batch)
            .enumerate()
            .map(|(i, chunk)| pb::UsageBatch {
                dataplane_id: format!("bench-dp-{}", i % args.senders),
                records: chunk.to_vec(),
            })
            .collect(),
    );
    drop(records);
    println!(
        "control plane on {url}, database {}; {} batches ready",
        dir.path().join("drover.db").display(),
        batches.len()
    );

    let pass = send_all(&url, &batches, args.senders).await?;
    ensure!(
        pass.applied == args.records as u64 && pass.duplicates == 0,
        "applied {} and {} duplicates; expected {} new records",
        pass.applied,
        pass.duplicates,
        args.records
    );
    report("ingest", args.records, args.batch, args.senders, &pass);

    if args.resend {
        let again = send_all(&url, &batches, args.senders).await?;
        ensure!(
            again.applied == 0 && again.duplicates == args.records as u64,
            "a resend applied {} records",
            again.applied
        );
        report(
            "resend (all duplicates)",
            args.records,
            args.batch,
            args.senders,
            &again,
        );
    }

    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let mut admin = AdminServiceClient::new(channel);
    let total = admin
        .query_usage(authed(pb::UsageQuery::default(), ADMIN_TOKEN)?)
        .await?
        .into_inner()
        .total
        .unwrap_or_default();
    ensure!(
        total.requests == args.records as u64 && total.cost_nano_usd == expected_cost,
        "the ledger holds {} requests and {} nano-USD; sent {} and {expected_cost}",
        total.requests,
        total.cost_nano_usd,
        args.records
    );
    println!(
        "ledger check: {} requests, {} nano-USD, as sent",
        total.requests, total.cost_nano_usd
    );

    shutdown.cancel();
    cp.wait().await?;
    Ok(())
}
