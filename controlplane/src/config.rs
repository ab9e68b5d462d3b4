//! The control plane's configuration, as `main` (or an embedding process) builds it.
//!
//! Nothing here reads the environment: the binary does that once and hands over a `Config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::tls::{self, ALPN_H2, TlsError};
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;

/// How long raw usage records are kept before they are compacted into the daily rollups.
pub const DEFAULT_USAGE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a new gRPC connection has to finish its TLS handshake (if TLS is on) and send
/// the HTTP/2 preface before it is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a lease lives without renewal (`--lease-ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often data planes must send on their lease stream (`--lease-heartbeat`).
pub const DEFAULT_LEASE_HEARTBEAT: Duration = Duration::from_secs(2);
/// Length of a rate window (`--limit-window`).
pub const DEFAULT_LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// Shortest and longest time to live of a lease. After a restart the control plane grants
/// nothing for one time to live, so a long one is an outage of every limited tenant.
const LEASE_TTL_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(600));
/// Shortest heartbeat: data planes must not be asked to send more often.
const MIN_LEASE_HEARTBEAT: Duration = Duration::from_millis(10);
/// Shortest and longest rate window.
const LIMIT_WINDOW_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// Everything the control plane needs to start.
#[derive(Clone)]
pub struct Config {
    /// The SQLite database; created (with its directory) if missing.
    pub db_path: PathBuf,
    /// Where gRPC (admin, policy, reflection, health) listens. Port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// The admin token. `None`: read `token_file_for(db_path)`, or create it on first start.
    pub admin_token: Option<String>,
    /// An extra token accepted on `PolicyService` only (the data planes' join token).
    pub dataplane_token: Option<String>,
    /// Base64 of the 32-byte key that encrypts stored credentials. `None`: read
    /// `master_key_file_for(db_path)`, or create it (mode 0600) on first start.
    pub master_key: Option<String>,
    /// Age after which raw usage records are compacted into the daily rollups (and deleted);
    /// totals stay exact, per-request detail and sub-day time ranges go. `None` (or zero): keep
    /// raw records forever. Usually [`DEFAULT_USAGE_RETENTION`].
    pub usage_retention: Option<Duration>,
    /// Age after which audit records are pruned from the start of the chain (the checkpoint
    /// keeps it verifiable). `None` (or zero): keep them forever, the default.
    pub audit_retention: Option<Duration>,
    /// TLS on the gRPC listener; `None` serves plaintext gRPC.
    pub tls: Option<GrpcTls>,
    /// Time a new connection has to become an HTTP/2 connection (TLS handshake included).
    /// Usually [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// The clock of the lease stream: time to live, heartbeat, rate window.
    pub leases: LeaseTiming,
}

impl Config {
    /// The usage retention in force: `None` keeps raw records forever.
    pub fn usage_retention(&self) -> Option<Duration> {
        self.usage_retention.filter(|d| !d.is_zero())
    }
}

/// The retention for a number of days, as the binaries take it: 0 keeps raw records forever.
pub fn usage_retention_days(days: u32) -> Option<Duration> {
    (days > 0).then(|| Duration::from_secs(u64::from(days) * 24 * 3600))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("Config")
            .field("db_path", &self.db_path)
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_token", &redacted(&self.admin_token))
            .field("dataplane_token", &redacted(&self.dataplane_token))
            .field("master_key", &redacted(&self.master_key))
            .field("usage_retention", &self.usage_retention)
            .field("audit_retention", &self.audit_retention)
            .field("tls", &self.tls)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("leases", &self.leases)
            .finish()
    }
}

/// The clock of the lease protocol (docs/limits-and-caps.md), checked: a lease lives `ttl`
/// without renewal, data planes send at least every `heartbeat` (less than half the time to
/// live, so that one lost heartbeat never expires a lease), rate limits count per `window`.
/// All whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    ttl: Duration,
    heartbeat: Duration,
    window: Duration,
}

/// Why lease timings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLeaseTiming(String);

impl LeaseTiming {
    /// Checks the three: time to live from 100 ms to 10 min, heartbeat at least 10 ms and less
    /// than half the time to live, window from 1 s to 24 h, each in whole milliseconds.
    pub fn new(
        ttl: Duration,
        heartbeat: Duration,
        window: Duration,
    ) -> Result<LeaseTiming, InvalidLeaseTiming> {
        let invalid = |msg: String| Err(InvalidLeaseTiming(msg));
        for (flag, d) in [
            ("--lease-ttl", ttl),
            ("--lease-heartbeat", heartbeat),
            ("--limit-window", window),
        ] {
            if d.subsec_nanos() % 1_000_000 != 0 {
                return invalid(format!("{flag} {d:?} is not a whole number of milliseconds"));
            }
        }
        if ttl < LEASE_TTL_RANGE.0 || ttl > LEASE_TTL_RANGE.1 {
            return invalid(format!("--lease-ttl {ttl:?} is not from 100ms to 10m"));
        }
        if heartbeat < MIN_LEASE_HEARTBEAT || heartbeat.saturating_mul(2) >= ttl {
            return invalid(format!(
                "--lease-heartbeat {heartbeat:?} must be at least 10ms and less than half of --lease-ttl {ttl:?}"
            ));
        }
        if window < LIMIT_WINDOW_RANGE.0 || window > LIMIT_WINDOW_RANGE.1 {
            return invalid(format!("--limit-window {window:?} is not from 1s to 24h"));
        }
        Ok(LeaseTiming {
            ttl,
            heartbeat,
            window,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

impl Default for LeaseTiming {
    /// 10 s to live, a heartbeat every 2 s, windows of 60 s.
    fn default() -> Self {
        LeaseTiming {
            ttl: DEFAULT_LEASE_TTL,
            heartbeat: DEFAULT_LEASE_HEARTBEAT,
            window: DEFAULT_LIMIT_WINDOW,
        }
    }
}

/// A duration given as a flag, in whole milliseconds up to `u32::MAX` (49 days): small, so
/// that flattened flags keep the CLI's argument types small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagDuration(u32);

impl FlagDuration {
    pub fn get(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }

    /// Parses a whole number and a unit, `ms`, `s`, `m` or `h` (`250ms`, `10s`, `1m`).
    pub fn parse(raw: &str) -> Result<FlagDuration, String> {
        let d = parse_duration(raw)?;
        u32::try_from(d.as_millis())
            .map(FlagDuration)
            .map_err(|_| format!("{raw:?} is too long"))
    }
}

/// A duration as the flags take it: a whole number and a unit, `ms`, `s`, `m` or `h`
/// (`250ms`, `10s`, `1m`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let unit_at = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} has no unit: write e.g. 250ms, 10s, 1m or 1h"))?;
    let (n, unit) = raw.split_at(unit_at);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 250ms, 10s, 1m or 1h"))?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{raw:?}: the unit must be ms, s, m or h")),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

/// The gRPC listener's TLS identity: a certificate chain and its key, loaded, offering
/// ALPN `h2` only.
#[derive(Clone)]
pub struct GrpcTls {
    config: Arc<ServerConfig>,
    certificate: CertificateDer<'static>,
}

impl GrpcTls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<GrpcTls, TlsError> {
        let (config, certificate) = tls::server_identity(cert, key, &[ALPN_H2])?;
        Ok(GrpcTls { config, certificate })
    }

    /// Loads the pair if both files are given; `None` if neither is. One without the other
    /// is refused by the argument parsers (`requires`) before this is called.
    pub fn load_pair(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<GrpcTls>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => GrpcTls::load(cert, key).map(Some),
            (None, None) => Ok(None),
            (Some(_), None) | (None, Some(_)) => Err(TlsError::Setup(
                "a TLS certificate and its key go together: give both or neither".to_owned(),
            )),
        }
    }

    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The leaf certificate served, for a client in the same process to pin
    /// (`drover_proto::tls::Trust::Pinned`).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }
}

impl fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrpcTls")
    }
}

/// TLS options for the gRPC listener: a PEM certificate chain and its key, given together.
///
/// Declared once, with the names `drover serve` gives them (`--grpc-tls-cert`,
/// `--grpc-tls-key`, env `DROVER_GRPC_TLS_CERT`/`_KEY`: there `--tls-cert` is the HTTP
/// listener's). `drover-controlplane`, whose only listener is gRPC, renames them with
/// [`TlsArgs::standalone`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) for the gRPC listener; with its key, the admin API and
    /// the policy stream are served over TLS only.
    #[arg(
        long,
        env = "DROVER_GRPC_TLS_CERT",
        value_name = "FILE",
        requires = "grpc_tls_key"
    )]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC listener's certificate.
    #[arg(
        long,
        env = "DROVER_GRPC_TLS_KEY",
        value_name = "FILE",
        requires = "grpc_tls_cert"
    )]
    pub grpc_tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// `command` (which flattens these options) with `drover-controlplane`'s names for them:
    /// `--tls-cert`/`--tls-key`, env `DROVER_TLS_CERT`/`DROVER_TLS_KEY`, the `--grpc-` names
    /// kept as aliases.
    pub fn standalone(command: clap::Command) -> clap::Command {
        command
            .mut_arg("grpc_tls_cert", |a| {
                a.long("tls-cert")
                    .visible_alias("grpc-tls-cert")
                    .env("DROVER_TLS_CERT")
            })
            .mut_arg("grpc_tls_key", |a| {
                a.long("tls-key")
                    .visible_alias("grpc-tls-key")
                    .env("DROVER_TLS_KEY")
            })
    }

    /// The listener's TLS, loaded; `None` without the flags.
    pub fn load(&self) -> Result<Option<GrpcTls>, TlsError> {
        GrpcTls::load_pair(self.grpc_tls_cert.as_deref(), self.grpc_tls_key.as_deref())
    }
}

/// The control plane's listener and retention flags, shared by `drover-controlplane` and
/// `drover serve` (where the database is the global `--db`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Where the control plane serves gRPC (admin API, policy stream, usage, reflection, health).
    #[arg(
        long,
        env = "DROVER_GRPC",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR"
    )]
    pub grpc: std::net::SocketAddr,

    /// Days raw usage records are kept before they are compacted into daily totals (which are
    /// kept forever); 0 keeps raw records forever.
    #[arg(
        long,
        env = "DROVER_USAGE_RETENTION_DAYS",
        default_value_t = 30,
        value_name = "DAYS"
    )]
    pub usage_retention_days: u32,

    /// Days audit records are kept; older ones are pruned from the start of the chain, which
    /// stays verifiable from the checkpoint they leave. 0 (the default) keeps them forever.
    #[arg(
        long,
        env = "DROVER_AUDIT_RETENTION",
        default_value_t = 0,
        value_name = "DAYS"
    )]
    pub audit_retention: u32,

    /// How long a lease (a data plane's slice of a rate limit or spend cap) lives without
    /// renewal; after a restart the control plane grants nothing for this long (`10s`, `500ms`).
    #[arg(
        long,
        env = "DROVER_LEASE_TTL",
        default_value = "10s",
        value_parser = FlagDuration::parse,
        value_name = "DURATION"
    )]
    pub lease_ttl: FlagDuration,

    /// How often data planes must send on their lease stream; less than half of --lease-ttl.
    #[arg(
        long,
        env = "DROVER_LEASE_HEARTBEAT",
        default_value = "2s",
        value_parser = FlagDuration::parse,
        value_name = "DURATION"
    )]
    pub lease_heartbeat: FlagDuration,

    /// Length of a rate-limit window, aligned to the Unix epoch; rpm and tpm limits count per
    /// window (so per minute only with the default).
    #[arg(
        long,
        env = "DROVER_LIMIT_WINDOW",
        default_value = "60s",
        value_parser = FlagDuration::parse,
        value_name = "DURATION"
    )]
    pub limit_window: FlagDuration,

    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ControlArgs {
    /// The lease flags, checked.
    pub fn lease_timing(&self) -> Result<LeaseTiming, InvalidLeaseTiming> {
        LeaseTiming::new(
            self.lease_ttl.get(),
            self.lease_heartbeat.get(),
            self.limit_window.get(),
        )
    }
}

/// The admin token file beside a database: `drover.db` → `drover.admin-token`.
pub fn token_file_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("admin-token")
}

/// The master key file beside a database: `drover.db` → `drover.master-key`.
pub fn master_key_file_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("master-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_files_replace_the_extension() {
        assert_eq!(
            token_file_for(Path::new("/var/lib/drover/drover.db")),
            Path::new("/var/lib/drover/drover.admin-token")
        );
        assert_eq!(token_file_for(Path::new("state")), Path::new("state.admin-token"));
        assert_eq!(
            master_key_file_for(Path::new("a/drover.db")),
            Path::new("a/drover.master-key")
        );
    }

    #[test]
    fn retention_zero_or_none_keeps_everything() {
        assert_eq!(usage_retention_days(0), None);
        assert_eq!(usage_retention_days(30), Some(DEFAULT_USAGE_RETENTION));
        let mut c = Config {
            db_path: "d.db".into(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: None,
            dataplane_token: None,
            master_key: None,
            usage_retention: Some(Duration::ZERO),
            audit_retention: None,
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            leases: LeaseTiming::default(),
        };
        assert_eq!(c.usage_retention(), None);
        c.usage_retention = Some(Duration::from_secs(60));
        assert_eq!(c.usage_retention(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config {
            db_path: "d.db".into(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some("tok-123".into()),
            dataplane_token: Some("dp-456".into()),
            master_key: Some("key-789".into()),
            usage_retention: Some(DEFAULT_USAGE_RETENTION),
            audit_retention: None,
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            leases: LeaseTiming::default(),
        };
        let s = format!("{c:?}");
        assert!(
            !s.contains("tok-123") && !s.contains("dp-456") && !s.contains("key-789"),
            "{s}"
        );
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
        for bad in [
            "10",
            "s",
            "-1s",
            "1.5s",
            "10 s",
            "10d",
            "",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(FlagDuration::parse("50d").is_err());
        assert!(FlagDuration::parse("1200h").is_err(), "beyond 49 days");
        assert_eq!(
            FlagDuration::parse("2s").map(FlagDuration::get),
            Ok(Duration::from_secs(2))
        );
    }

    #[test]
    fn lease_timings_are_checked() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let d = LeaseTiming::default();
        assert_eq!((d.ttl(), d.heartbeat(), d.window()), (s(10), s(2), s(60)));
        assert!(LeaseTiming::new(ms(600), ms(100), s(1)).is_ok());
        for (ttl, heartbeat, window, flag) in [
            (ms(99), ms(10), s(60), "--lease-ttl"),
            (s(601), s(2), s(60), "--lease-ttl"),
            (s(10), s(5), s(60), "--lease-heartbeat"),
            (s(10), ms(9), s(60), "--lease-heartbeat"),
            (s(10), s(2), ms(999), "--limit-window"),
            (s(10), s(2), s(86_401), "--limit-window"),
            (
                s(10),
                Duration::from_micros(2_000_500),
                s(60),
                "--lease-heartbeat",
            ),
        ] {
            let err = LeaseTiming::new(ttl, heartbeat, window).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[derive(clap::Parser)]
    struct Control {
        #[command(flatten)]
        control: ControlArgs,
    }

    #[test]
    fn lease_flags_default_and_parse() {
        use clap::Parser as _;
        let c = Control::try_parse_from(["cp"]).unwrap().control;
        assert_eq!(c.lease_timing().unwrap(), LeaseTiming::default());
        let c = Control::try_parse_from([
            "cp",
            "--lease-ttl",
            "800ms",
            "--lease-heartbeat",
            "100ms",
            "--limit-window",
            "2s",
        ])
        .unwrap()
        .control;
        let t = c.lease_timing().unwrap();
        assert_eq!(
            (t.ttl(), t.heartbeat(), t.window()),
            (
                Duration::from_millis(800),
                Duration::from_millis(100),
                Duration::from_secs(2)
            )
        );
        let e = Control::try_parse_from(["cp", "--lease-ttl", "10"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("has no unit"), "{e}");
        let c = Control::try_parse_from(["cp", "--lease-ttl", "1s"])
            .unwrap()
            .control;
        assert!(c.lease_timing().is_err(), "a 2s heartbeat is too long for 1s");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    /// Parsed under `drover-controlplane`'s names.
    fn parse(args: &[&str]) -> Result<TlsArgs, String> {
        use clap::{CommandFactory as _, FromArgMatches as _};
        TlsArgs::standalone(Cli::command())
            .try_get_matches_from(std::iter::once("cp").chain(args.iter().copied()))
            .and_then(|m| Cli::from_arg_matches(&m))
            .map(|c| c.tls)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        assert!(
            parse(&[]).unwrap().load().unwrap().is_none(),
            "plaintext by default"
        );
        let e = parse(&["--tls-cert", "c.pem"]).unwrap_err();
        assert!(e.contains("--tls-key"), "{e}");
        let e = parse(&["--tls-key", "k.pem"]).unwrap_err();
        assert!(e.contains("--tls-cert"), "{e}");
        let e = GrpcTls::load_pair(Some(Path::new("c.pem")), None).unwrap_err();
        assert!(e.to_string().contains("give both or neither"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem").display().to_string();
        let e = parse(&["--tls-cert", &missing, "--tls-key", &missing])
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read the TLS certificate") && e.contains("missing.pem"),
            "{e}"
        );

        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        let args = parse(&[
            "--grpc-tls-cert",
            &cert.display().to_string(),
            "--grpc-tls-key",
            &key.display().to_string(),
        ])
        .unwrap();
        let tls = args.load().unwrap().expect("TLS on");
        assert_eq!(tls.certificate(), issued.cert.der());
        assert_eq!(tls.server_config().alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(format!("{tls:?}"), "GrpcTls");
    }
}
