//! Data plane configuration: raw command-line [`Args`] validated into a typed [`Config`].
//! Nothing downstream parses strings or reads the environment; credential references are
//! resolved through the injected [`EnvLookup`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::Secret;
use drover_proto::tls::{CaBundle, TlsError, Trust};

use http::HeaderValue;

use crate::budget::{BodyLimits, budget_for, room_for};
use crate::health::BreakerConfig;
use crate::providers::EnvLookup;
use crate::providers::credential::{DEFAULT_CREDENTIAL_ENV_ALLOW, EnvAllowList};

/// How requests are sent upstream: timeouts, retries, breakers.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Whole-request deadline, across every attempt.
    pub request_timeout: Duration,
    /// Per attempt: until the response headers (and the first stream bytes); also the
    /// longest silence tolerated inside a stream.
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per request, at least one per target.
    pub max_attempts: u32,
    /// How long a request waits for a lease (rate limit, spend cap) before its tenant's
    /// on-cp-loss applies.
    pub lease_wait: Duration,
    /// Backoff before retrying a target already tried: full jitter over `base * 2^n`, capped.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub breaker: BreakerConfig,
    /// Cool-down after a 429 that carries no `retry-after`.
    pub default_cooldown: Duration,
    /// Retries allowed per original request, on top of `retry_min_per_sec`.
    pub retry_ratio: f64,
    pub retry_min_per_sec: u32,
    /// Largest upstream response body buffered (non-stream).
    pub max_response_bytes: usize,
    /// Largest single event of an upstream stream; a larger one ends the stream with an error.
    pub max_event_bytes: NonZeroUsize,
}

/// Default `--max-event-bytes`: 16 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = crate::formats::sse::DEFAULT_MAX_EVENT;

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            request_timeout: Duration::from_secs(600),
            upstream_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 3,
            lease_wait: Duration::from_millis(250),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            breaker: BreakerConfig {
                failures: 5,
                open_for: Duration::from_secs(30),
            },
            default_cooldown: Duration::from_secs(1),
            retry_ratio: 0.2,
            retry_min_per_sec: 10,
            max_response_bytes: 64 << 20,
            max_event_bytes: NonZeroUsize::new(DEFAULT_MAX_EVENT_BYTES).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// A control plane's `UsageService` in the same process.
pub type LocalUsage = Arc<dyn drover_proto::pb::usage_service_server::UsageService>;

/// How usage records are batched, bounded and kept until the control plane acks them.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// Most records per report.
    pub batch_max: NonZeroUsize,
    /// Longest a record waits for its batch to fill.
    pub flush_interval: Duration,
    /// Most records kept unacked (in memory and in the channel); beyond it records are dropped.
    pub spool_max: NonZeroUsize,
    /// File keeping unacked records across restarts; memory only if `None`.
    pub spool_file: Option<PathBuf>,
    /// How long a stopping data plane keeps trying to report what it holds.
    pub final_flush: Duration,
    /// Whether records are sent to the control plane at all. Off, requests are still metered
    /// (cost header, metrics) but the ledger gets nothing from this data plane.
    pub report: bool,
}

/// Default `--usage-batch-max`: at 30,000 requests per second, batches this large keep the
/// control plane to about 15 commits (one fsync each) per second.
pub const DEFAULT_USAGE_BATCH: usize = 2_000;

/// Largest `--usage-batch-max`: what the control plane accepts in one batch.
pub use drover_proto::limits::MAX_USAGE_BATCH;

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            batch_max: NonZeroUsize::new(DEFAULT_USAGE_BATCH).unwrap_or(NonZeroUsize::MIN),
            flush_interval: Duration::from_millis(200),
            spool_max: NonZeroUsize::new(100_000).unwrap_or(NonZeroUsize::MIN),
            spool_file: None,
            final_flush: Duration::from_secs(2),
            report: true,
        }
    }
}

/// Everything the data plane needs to run.
#[derive(Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    /// Control plane gRPC URL, e.g. `http://127.0.0.1:50051`, or `https://cp.internal:50051`
    /// for TLS.
    pub control_plane: String,
    /// Which certificates an `https://` control plane may present (policy and usage
    /// clients): the webpki roots unless a CA bundle is given.
    pub control_plane_trust: Trust,
    /// Token presented to the control plane.
    pub token: Option<Secret>,
    /// Stable identity reported to the control plane.
    pub dataplane_id: String,
    /// Where the last applied snapshot is kept, to start from when the control plane is away.
    pub last_good: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Longest time to receive a whole request body.
    pub body_read_timeout: Duration,
    /// Request-body bytes all requests together may hold in memory.
    pub max_buffered_body_bytes: usize,
    /// Connection limits and timeouts of the HTTP listener.
    pub listener: ListenerConfig,
    /// Origins whose web pages may call the API from a browser (CORS); none by default.
    pub cors_origins: Vec<HeaderValue>,
    /// Memory bound of the response cache, in bytes.
    pub cache_max_bytes: u64,
    pub proxy: ProxyConfig,
    pub usage: UsageConfig,
    /// The control plane's usage service in this process (`drover serve`): usage batches are
    /// handed to it directly instead of over gRPC. Policy still streams over gRPC.
    pub local_usage: Option<LocalUsage>,
    /// Resolves `env:VAR` credentials.
    pub env: EnvLookup,
    /// The variables `env:VAR` credentials may name; others (and `DROVER_*`) are never read.
    pub credential_env_allow: EnvAllowList,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("control_plane", &self.control_plane)
            .field("control_plane_trust", &self.control_plane_trust)
            .field("token", &self.token)
            .field("dataplane_id", &self.dataplane_id)
            .field("last_good", &self.last_good)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("max_buffered_body_bytes", &self.max_buffered_body_bytes)
            .field("listener", &self.listener)
            .field("cors_origins", &self.cors_origins)
            .field("proxy", &self.proxy)
            .field("usage", &self.usage)
            .field("local_usage", &self.local_usage.is_some())
            .field("credential_env_allow", &self.credential_env_allow.to_string())
            .finish_non_exhaustive()
    }
}

/// Default request body limit: 32 MiB.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;

/// Default budget of request-body bytes held in memory at once: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BODIES: usize = 256 << 20;

/// The process environment, for binaries.
pub fn process_env() -> EnvLookup {
    Arc::new(|var: &str| std::env::var(var).ok())
}

impl Config {
    /// Defaults for everything but where to listen and where the control plane is.
    pub fn new(http_addr: SocketAddr, control_plane: impl Into<String>, env: EnvLookup) -> Self {
        Config {
            http_addr,
            control_plane: control_plane.into(),
            control_plane_trust: Trust::WebPki,
            token: None,
            dataplane_id: default_id(),
            last_good: None,
            max_body_bytes: DEFAULT_MAX_BODY,
            body_read_timeout: Duration::from_secs(60),
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODIES,
            listener: ListenerConfig::default(),
            cors_origins: Vec::new(),
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            proxy: ProxyConfig::default(),
            usage: UsageConfig::default(),
            local_usage: None,
            env,
            credential_env_allow: EnvAllowList::default(),
        }
    }

    /// How request bodies are bounded.
    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            max_bytes: self.max_body_bytes,
            read_timeout: self.body_read_timeout,
        }
    }
}

fn default_id() -> String {
    format!("dp-{:08x}", rand::random::<u32>())
}

/// Command-line arguments of `drover-dataplane`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Control plane gRPC URL; `https://` for TLS.
    #[arg(long, env = "DROVER_CONTROL_PLANE", default_value = "http://127.0.0.1:50051")]
    pub control_plane: String,
    /// PEM CA bundle that an https:// control plane's certificate must chain to, instead of
    /// the built-in webpki (Mozilla) roots.
    #[arg(long, env = "DROVER_CONTROL_PLANE_CA", value_name = "FILE")]
    pub control_plane_ca: Option<PathBuf>,
    /// Address to serve HTTP on.
    #[arg(long, env = "DROVER_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Token presented to the control plane (the data plane token or the admin token).
    #[arg(long, env = "DROVER_DATAPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Identity reported to the control plane (default: a random id).
    #[arg(long, env = "DROVER_DATAPLANE_ID")]
    pub id: Option<String>,
    /// File to keep the last applied policy in, and to start from when the control plane is unreachable.
    #[arg(long, env = "DROVER_LAST_GOOD")]
    pub last_good: Option<PathBuf>,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub usage: UsageArgs,
}

/// How usage records are reported to the control plane.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// File that keeps unreported usage records across restarts (default: memory only).
    #[arg(long = "usage-spool", env = "DROVER_USAGE_SPOOL", value_name = "FILE")]
    pub usage_spool: Option<PathBuf>,
    /// Most usage records per report to the control plane.
    #[arg(long, env = "DROVER_USAGE_BATCH_MAX", default_value_t = DEFAULT_USAGE_BATCH)]
    pub usage_batch_max: usize,
    /// Longest a usage record waits for its batch to fill, in milliseconds.
    #[arg(long, env = "DROVER_USAGE_FLUSH_MS", default_value_t = 200)]
    pub usage_flush_ms: u64,
    /// Most unreported usage records kept; beyond it new records are dropped (and counted).
    #[arg(long, env = "DROVER_USAGE_SPOOL_MAX", default_value_t = 100_000)]
    pub usage_spool_max: usize,
}

impl UsageArgs {
    /// Sets the usage part of `config`.
    pub fn apply(&self, config: &mut Config) -> Result<(), ConfigError> {
        let nonzero = |name, v| NonZeroUsize::new(v).ok_or(ConfigError::Zero(name));
        if self.usage_flush_ms == 0 {
            return Err(ConfigError::Zero("usage-flush-ms"));
        }
        if self.usage_batch_max > MAX_USAGE_BATCH {
            return Err(ConfigError::TooLarge("usage-batch-max", MAX_USAGE_BATCH));
        }
        config.usage.batch_max = nonzero("usage-batch-max", self.usage_batch_max)?;
        config.usage.spool_max = nonzero("usage-spool-max", self.usage_spool_max)?;
        config.usage.flush_interval = Duration::from_millis(self.usage_flush_ms);
        config.usage.spool_file.clone_from(&self.usage_spool);
        Ok(())
    }
}

/// How the proxy treats requests; shared by `drover-dataplane` and `drover serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "DROVER_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Longest time, in seconds, a caller may take to send a whole request body (408 beyond it).
    #[arg(long, env = "DROVER_BODY_READ_TIMEOUT", default_value_t = 60)]
    pub body_read_timeout: u64,
    /// Request-body bytes all requests together may hold in memory; beyond it, 503 with `retry-after`.
    #[arg(long, env = "DROVER_MAX_BUFFERED_BODY_BYTES", default_value_t = DEFAULT_MAX_BUFFERED_BODIES)]
    pub max_buffered_body_bytes: usize,
    /// Most HTTP connections open at once; beyond it, new ones get a 503 and are closed. Lowered
    /// to half the process's open-file limit when that is smaller.
    #[arg(long, env = "DROVER_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Longest time, in seconds, to send a request head (from the connection's accept for its
    /// first request, from the head's first byte for later ones).
    #[arg(long, env = "DROVER_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Longest time, in seconds, an idle keep-alive connection is kept open.
    #[arg(long, env = "DROVER_IDLE_TIMEOUT", default_value_t = 75)]
    pub idle_timeout: u64,
    /// An origin (`https://app.example.com`) whose web pages may call the API from a browser;
    /// repeat or separate with commas. None by default: no CORS headers are sent.
    #[arg(long = "cors-origin", env = "DROVER_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// PEM certificate chain: serve the OpenAI and Anthropic APIs over HTTPS (with --tls-key).
    #[arg(long, env = "DROVER_HTTP_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "DROVER_HTTP_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Whole-request deadline in seconds, across retries.
    #[arg(long, env = "DROVER_REQUEST_TIMEOUT", default_value_t = 600)]
    pub request_timeout: u64,
    /// Per-attempt timeout in seconds until the provider answers; also the longest silence inside a
    /// response body or a stream.
    #[arg(long, env = "DROVER_UPSTREAM_TIMEOUT", default_value_t = 300)]
    pub upstream_timeout: u64,
    /// Largest single event of a provider's stream, in bytes; a larger one ends the stream with an
    /// `event_too_large` error event.
    #[arg(long, env = "DROVER_MAX_EVENT_BYTES", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Attempts per request (at least one per target of the route).
    #[arg(long, env = "DROVER_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// How long, in milliseconds, a request waits for a lease from the control plane (rate
    /// limits, spend caps) before its tenant's on-cp-loss (open or closed) applies.
    #[arg(long, env = "DROVER_LEASE_WAIT_MS", default_value_t = 250)]
    pub lease_wait_ms: u64,
    /// Memory bound of the response cache, in bytes (routes opt in with `route set --cache-ttl`).
    #[arg(long, env = "DROVER_CACHE_MAX_BYTES", default_value_t = DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: u64,
    /// `off`: requests are still metered (cost header, metrics) but no usage records are sent to
    /// the control plane, so its ledger and `drover usage` get nothing from this data plane.
    #[arg(long, env = "DROVER_USAGE_REPORTING", value_enum, default_value_t = Switch::On)]
    pub usage_reporting: Switch,
    /// Environment variables a provider's `--api-key-env` may name, comma-separated; `*` matches
    /// any run of characters. Others are never read (their providers are reported unavailable),
    /// nor are `DROVER_*` variables, whatever this list says. Empty: none.
    #[arg(
        long,
        env = "DROVER_CREDENTIAL_ENV_ALLOW",
        default_value = DEFAULT_CREDENTIAL_ENV_ALLOW,
        value_name = "PATTERNS"
    )]
    pub credential_env_allow: String,
}

/// A feature flag's value on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Default memory bound of the response cache: 256 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;

/// Why the arguments do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--control-plane {0:?} must be an http:// or https:// URL")]
    ControlPlaneUrl(String),
    #[error("--{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--{0} must be at most {1}")]
    TooLarge(&'static str, usize),
    #[error(
        "--max-buffered-body-bytes {budget} has no room for one body of --max-body-bytes {body} \
         (bodies over 1 MiB may fill seven eighths of it), so such requests would get 503 forever; \
         raise it to at least {needed} or lower --max-body-bytes"
    )]
    BudgetBelowBody {
        budget: usize,
        body: usize,
        needed: usize,
    },
    #[error("--usage-spool keeps records for the control plane; it needs --usage-reporting on")]
    SpoolWithoutReporting,
    #[error(
        "--cors-origin {0:?} must be `*` or an origin such as https://app.example.com (scheme, host and port only)"
    )]
    CorsOrigin(String),
    #[error(
        "--control-plane-ca is for a control plane reached over TLS; --control-plane {0} is not an https:// URL"
    )]
    CaWithoutTls(String),
    #[error("--control-plane-ca: {0}")]
    Tls(#[from] TlsError),
    #[error("--tls-cert/--tls-key: {0}")]
    HttpTls(TlsError),
    #[error("--credential-env-allow: {0}")]
    CredentialEnvAllow(#[from] crate::providers::credential::BadPattern),
}

impl ProxyArgs {
    /// Sets the proxy part of `config`.
    pub fn apply(&self, config: &mut Config) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max-body-bytes", self.max_body_bytes as u64),
            ("body-read-timeout", self.body_read_timeout),
            ("max-buffered-body-bytes", self.max_buffered_body_bytes as u64),
            ("max-connections", self.max_connections as u64),
            ("header-read-timeout", self.header_read_timeout),
            ("idle-timeout", self.idle_timeout),
            ("request-timeout", self.request_timeout),
            ("upstream-timeout", self.upstream_timeout),
            ("max-attempts", u64::from(self.max_attempts)),
            ("lease-wait-ms", self.lease_wait_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        config.proxy.max_event_bytes =
            NonZeroUsize::new(self.max_event_bytes).ok_or(ConfigError::Zero("max-event-bytes"))?;
        // A body the size limit lets through must be able to fit in the budget, or it is
        // refused as "busy, retry" however often it is retried.
        if self.max_body_bytes > room_for(self.max_buffered_body_bytes, self.max_body_bytes) {
            return Err(ConfigError::BudgetBelowBody {
                budget: self.max_buffered_body_bytes,
                body: self.max_body_bytes,
                needed: budget_for(self.max_body_bytes),
            });
        }
        config.max_body_bytes = self.max_body_bytes;
        config.body_read_timeout = Duration::from_secs(self.body_read_timeout);
        config.max_buffered_body_bytes = self.max_buffered_body_bytes;
        config.listener.max_connections = self.max_connections;
        config.listener.header_read_timeout = Duration::from_secs(self.header_read_timeout);
        config.listener.idle_timeout = Duration::from_secs(self.idle_timeout);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let alpn = [drover_proto::tls::ALPN_H2, drover_proto::tls::ALPN_HTTP1];
            config.listener.tls =
                Some(drover_proto::tls::server_config(cert, key, &alpn).map_err(ConfigError::HttpTls)?);
        }
        config.cors_origins = self
            .cors_origins
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| cors_origin(o.trim()))
            .collect::<Result<_, _>>()?;
        config.cache_max_bytes = self.cache_max_bytes;
        config.proxy.request_timeout = Duration::from_secs(self.request_timeout);
        config.proxy.upstream_timeout = Duration::from_secs(self.upstream_timeout);
        config.proxy.max_attempts = self.max_attempts;
        config.proxy.lease_wait = Duration::from_millis(self.lease_wait_ms);
        config.usage.report = self.usage_reporting == Switch::On;
        config.credential_env_allow = EnvAllowList::parse(&self.credential_env_allow)?;
        Ok(())
    }
}

/// A `--cors-origin` value: `*`, or `scheme://host[:port]` with nothing after it.
fn cors_origin(origin: &str) -> Result<HeaderValue, ConfigError> {
    let bad = || ConfigError::CorsOrigin(origin.chars().take(200).collect());
    if origin != "*" {
        let url = url::Url::parse(origin).map_err(|_| bad())?;
        let bare = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && !origin.ends_with('/');
        if !bare {
            return Err(bad());
        }
    }
    HeaderValue::from_str(origin).map_err(|_| bad())
}

impl Args {
    pub fn into_config(self, env: EnvLookup) -> Result<Config, ConfigError> {
        if !(self.control_plane.starts_with("http://") || self.control_plane.starts_with("https://")) {
            return Err(ConfigError::ControlPlaneUrl(self.control_plane));
        }
        let trust = match &self.control_plane_ca {
            None => Trust::WebPki,
            Some(_) if !self.control_plane.starts_with("https://") => {
                return Err(ConfigError::CaWithoutTls(self.control_plane));
            }
            Some(path) => Trust::Ca(CaBundle::load(path)?),
        };
        let mut config = Config::new(self.http, self.control_plane, env);
        config.control_plane_trust = trust;
        self.proxy.apply(&mut config)?;
        self.usage.apply(&mut config)?;
        if !config.usage.report && config.usage.spool_file.is_some() {
            return Err(ConfigError::SpoolWithoutReporting);
        }
        config.token = self.token.filter(|t| !t.is_empty()).map(Secret::new);
        if let Some(id) = self.id {
            config.dataplane_id = id;
        }
        config.last_good = self.last_good;
        Ok(config)
    }
}

/// Connection limits and timeouts of the HTTP listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Most connections open at once; beyond it new ones get a 503 and are closed.
    pub max_connections: usize,
    /// Longest time to send a request head: from the accept for a connection's first
    /// request, from the head's first byte for later ones.
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait, idle, for its next request.
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings; a ping unanswered for as long closes the connection.
    pub http2_keepalive: Duration,
    /// Most concurrent requests (streams) on one HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Serve HTTPS with this certificate (ALPN h2 and http/1.1); plain HTTP if `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            http2_keepalive: Duration::from_secs(30),
            http2_max_streams: 256,
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("dp").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args
            .into_config(Arc::new(|_: &str| None))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_typed_config() {
        let c = parse(&[
            "--http",
            "127.0.0.1:9000",
            "--max-body-bytes",
            "1024",
            "--upstream-timeout",
            "7",
            "--id",
            "edge-1",
        ])
        .unwrap();
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(7));
        assert_eq!(c.proxy.max_event_bytes.get(), 16 << 20);
        assert_eq!(c.dataplane_id, "edge-1");
        assert_eq!(c.control_plane, "http://127.0.0.1:50051");
        assert_eq!(c.usage.batch_max.get(), 2000);
        assert_eq!(c.usage.flush_interval, Duration::from_millis(200));
        assert_eq!(c.usage.spool_max.get(), 100_000);
        assert!(c.usage.spool_file.is_none());
        assert!(c.usage.report);
        assert_eq!(c.credential_env_allow, EnvAllowList::default());
        assert_eq!(c.listener.max_connections, 10_000);
        assert_eq!(c.listener.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.listener.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.body_read_timeout, Duration::from_secs(60));
        assert_eq!(c.max_buffered_body_bytes, 256 << 20);
        assert!(c.cors_origins.is_empty());
    }

    #[test]
    fn connection_and_body_bounds() {
        let c = parse(&[
            "--max-connections",
            "50",
            "--header-read-timeout",
            "3",
            "--idle-timeout",
            "9",
            "--body-read-timeout",
            "4",
            "--max-buffered-body-bytes",
            "1000",
            "--max-body-bytes",
            "1000",
        ])
        .unwrap();
        assert_eq!(c.listener.max_connections, 50);
        assert_eq!(c.listener.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.listener.idle_timeout, Duration::from_secs(9));
        assert_eq!(c.body_read_timeout, Duration::from_secs(4));
        assert_eq!(c.max_buffered_body_bytes, 1000);
        for flag in [
            "--max-connections",
            "--header-read-timeout",
            "--idle-timeout",
            "--body-read-timeout",
            "--max-buffered-body-bytes",
        ] {
            let e = parse(&[flag, "0"]).unwrap_err();
            assert!(e.contains(&format!("{flag} must be greater than zero")), "{e}");
        }
    }

    #[test]
    fn the_body_budget_has_room_for_the_largest_body() {
        // 32 MiB bodies (the default) may fill seven eighths of the budget.
        let needed = 38_347_922;
        assert!(needed - needed / 8 >= 32 << 20 && (needed - 1) - (needed - 1) / 8 < 32 << 20);
        let c = parse(&["--max-buffered-body-bytes", &needed.to_string()]).unwrap();
        assert_eq!(c.max_buffered_body_bytes, needed);
        let e = parse(&["--max-buffered-body-bytes", &(needed - 1).to_string()]).unwrap_err();
        assert!(
            e.contains(&format!(
                "raise it to at least {needed} or lower --max-body-bytes"
            )),
            "{e}"
        );
        // Small bodies may fill all of it.
        assert!(parse(&["--max-buffered-body-bytes", "4096", "--max-body-bytes", "4096"]).is_ok());
        let e = parse(&["--max-buffered-body-bytes", "4095", "--max-body-bytes", "4096"]).unwrap_err();
        assert!(
            e.contains("has no room for one body of --max-body-bytes 4096"),
            "{e}"
        );
    }

    #[test]
    fn https_needs_a_certificate_and_its_key() {
        let e = parse(&["--tls-cert", "/nonexistent/cert.pem"]).unwrap_err();
        assert!(e.contains("--tls-key"), "{e}");
        let e = parse(&["--tls-key", "/nonexistent/key.pem"]).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        let e = parse(&[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .unwrap_err();
        assert!(
            e.starts_with("--tls-cert/--tls-key:") && e.contains("/nonexistent/cert.pem"),
            "{e}"
        );
        assert!(parse(&[]).unwrap().listener.tls.is_none());
    }

    #[test]
    fn cors_origins_are_bare_origins() {
        let c = parse(&[
            "--cors-origin",
            "https://app.example.com,http://localhost:3000",
            "--cors-origin",
            "https://other.example",
        ])
        .unwrap();
        assert_eq!(
            c.cors_origins,
            [
                "https://app.example.com",
                "http://localhost:3000",
                "https://other.example"
            ]
        );
        assert_eq!(parse(&["--cors-origin", "*"]).unwrap().cors_origins, ["*"]);
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://x.example",
            "https://user@x.example",
            "null",
        ] {
            let e = parse(&["--cors-origin", bad]).unwrap_err();
            assert!(e.contains("--cors-origin"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_credential_env_allow_list_is_a_flag() {
        let c = parse(&["--credential-env-allow", "*_API_KEY,OLLAMA_TOKEN"]).unwrap();
        assert!(c.credential_env_allow.allows("OLLAMA_TOKEN"));
        assert!(c.credential_env_allow.allows("GROQ_API_KEY"));
        assert!(!c.credential_env_allow.allows("HOME"));
        let none = parse(&["--credential-env-allow", ""]).unwrap();
        assert!(!none.credential_env_allow.allows("OPENAI_API_KEY"));
        let e = parse(&["--credential-env-allow", "OPENAI-KEY"]).unwrap_err();
        assert!(
            e.contains("--credential-env-allow") && e.contains("OPENAI-KEY"),
            "{e}"
        );
    }

    #[test]
    fn usage_reporting_can_be_switched_off_but_not_with_a_spool_file() {
        assert!(parse(&["--usage-reporting", "on"]).unwrap().usage.report);
        assert!(!parse(&["--usage-reporting", "off"]).unwrap().usage.report);
        let e = parse(&["--usage-reporting", "maybe"]).unwrap_err();
        assert!(e.contains("--usage-reporting") && e.contains("off"), "{e}");
        let e = parse(&["--usage-reporting", "off", "--usage-spool", "/tmp/s"]).unwrap_err();
        assert!(e.contains("needs --usage-reporting on"), "{e}");
    }

    #[test]
    fn usage_flags() {
        let c = parse(&[
            "--usage-spool",
            "/var/lib/drover/usage.spool",
            "--usage-batch-max",
            "50",
            "--usage-flush-ms",
            "20",
            "--usage-spool-max",
            "1000",
        ])
        .unwrap();
        assert_eq!(
            c.usage.spool_file,
            Some(PathBuf::from("/var/lib/drover/usage.spool"))
        );
        assert_eq!(c.usage.batch_max.get(), 50);
        assert_eq!(c.usage.flush_interval, Duration::from_millis(20));
        assert_eq!(c.usage.spool_max.get(), 1000);
        for (flags, error) in [
            (
                ["--usage-batch-max", "0"],
                "--usage-batch-max must be greater than zero",
            ),
            (
                ["--usage-batch-max", "10001"],
                "--usage-batch-max must be at most 10000",
            ),
            (
                ["--usage-spool-max", "0"],
                "--usage-spool-max must be greater than zero",
            ),
            (
                ["--usage-flush-ms", "0"],
                "--usage-flush-ms must be greater than zero",
            ),
        ] {
            assert!(parse(&flags).unwrap_err().contains(error), "{flags:?}");
        }
    }

    #[test]
    fn max_event_bytes_is_set_and_must_be_positive() {
        let c = parse(&["--max-event-bytes", "4096"]).unwrap();
        assert_eq!(c.proxy.max_event_bytes.get(), 4096);
        assert!(
            parse(&["--max-event-bytes", "0"])
                .unwrap_err()
                .contains("--max-event-bytes must be greater than zero")
        );
        assert!(parse(&["--max-event-bytes", "-1"]).is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(
            parse(&["--max-attempts", "0"])
                .unwrap_err()
                .contains("--max-attempts must be greater than zero")
        );
        assert!(
            parse(&["--control-plane", "grpc://x"])
                .unwrap_err()
                .contains("http:// or https://")
        );
        assert!(parse(&["--http", "nope"]).is_err());
    }

    #[test]
    fn a_ca_bundle_needs_an_https_control_plane_and_a_readable_file() {
        assert!(matches!(parse(&[]).unwrap().control_plane_trust, Trust::WebPki));
        let c = parse(&["--control-plane", "https://cp.internal:50051"]).unwrap();
        assert!(
            matches!(c.control_plane_trust, Trust::WebPki),
            "webpki roots by default"
        );

        let e = parse(&["--control-plane-ca", "/etc/drover/ca.pem"]).unwrap_err();
        assert!(
            e.contains("--control-plane-ca is for a control plane reached over TLS")
                && e.contains("http://127.0.0.1:50051 is not an https:// URL"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = parse(&[
            "--control-plane",
            "https://cp:1",
            "--control-plane-ca",
            missing.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(
            e.starts_with("--control-plane-ca: cannot read the CA bundle") && e.contains("missing.pem"),
            "{e}"
        );
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let e = parse(&[
            "--control-plane",
            "https://cp:1",
            "--control-plane-ca",
            not_pem.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
    }

    #[test]
    fn the_token_never_prints() {
        let c = parse(&["--token", "super-secret-token"]).unwrap();
        assert!(!format!("{c:?}").contains("super-secret-token"));
    }
}
