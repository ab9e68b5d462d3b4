//! `drover serve`: the control plane and one data plane in one process, over one SQLite
//! database. The data plane streams its policy from the control plane over loopback gRPC like
//! any other, with the admin token, so `drover status` shows it (over TLS when the gRPC
//! listener serves TLS, trusting exactly the certificate it serves); its usage batches go to the
//! control plane's usage service directly, with the same exactly-once answer and no encoding.
//! Ctrl-C or SIGTERM stops both; if either stops on its own, the other is stopped too.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use drover_controlplane::{
    ControlArgs, ControlPlane, DEFAULT_HANDSHAKE_TIMEOUT, GrpcTls, LeaseTiming, usage_retention_days,
};
use drover_dataplane::DataPlane;
use drover_proto::model::Secret;
use drover_proto::tls::Trust;
use tokio_util::sync::CancellationToken;

use crate::client::GlobalArgs;

/// Identity of the in-process data plane, as `drover status` shows it.
const DATAPLANE_ID: &str = "local";

/// `drover serve`. The database is the global --db. The admin token is --token or
/// DROVER_ADMIN_TOKEN, else the one kept beside the database (created on first start).
/// DROVER_DATAPLANE_TOKEN sets a join token for other data planes, DROVER_MASTER_KEY the key
/// that encrypts stored API keys (else a key file beside the database).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the data plane serves the OpenAI and Anthropic APIs.
    #[arg(
        long,
        env = "DROVER_HTTP",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub http: SocketAddr,

    #[command(flatten)]
    pub control: ControlArgs,

    #[command(flatten)]
    pub proxy: drover_dataplane::ProxyArgs,
}

/// Everything `serve` needs, validated.
#[derive(Debug)]
pub struct Options {
    pub db: PathBuf,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// TLS on the gRPC listener; `None`: plaintext.
    pub grpc_tls: Option<GrpcTls>,
    pub admin_token: Option<Secret>,
    pub dataplane_token: Option<Secret>,
    pub master_key: Option<Secret>,
    /// `None`: keep raw usage records forever.
    pub usage_retention: Option<Duration>,
    /// `None`: keep audit records forever.
    pub audit_retention: Option<Duration>,
    /// The lease stream's time to live, heartbeat and rate window.
    pub leases: LeaseTiming,
    pub proxy: drover_dataplane::ProxyArgs,
}

impl ServeArgs {
    /// `env` looks up the secrets that are only taken from the environment. Fails if the
    /// gRPC listener's certificate or key cannot be loaded.
    pub fn into_options(
        self,
        global: &GlobalArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Options> {
        let secret = |v: Option<String>| v.filter(|s| !s.trim().is_empty()).map(Secret::new);
        let grpc_tls = self
            .control
            .tls
            .load()
            .context("--grpc-tls-cert/--grpc-tls-key")?;
        Ok(Options {
            db: global.db.clone(),
            http: self.http,
            grpc: self.control.grpc,
            grpc_tls,
            admin_token: secret(global.token.as_ref().map(|t| t.expose().to_owned())),
            dataplane_token: secret(env("DROVER_DATAPLANE_TOKEN")),
            master_key: secret(env("DROVER_MASTER_KEY")),
            usage_retention: usage_retention_days(self.control.usage_retention_days),
            audit_retention: usage_retention_days(self.control.audit_retention),
            leases: self.control.lease_timing()?,
            proxy: self.proxy,
        })
    }
}

/// Runs both planes until `shutdown` is cancelled or one of them stops.
pub async fn run(options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db = options.db.clone();
    // The control plane stops after the data plane, so that the data plane's last usage
    // records reach it on the way out.
    let control_shutdown = CancellationToken::new();
    let control_plane = ControlPlane::start(
        drover_controlplane::Config {
            db_path: options.db,
            grpc_addr: options.grpc,
            admin_token: options.admin_token.map(|t| t.expose().to_owned()),
            dataplane_token: options.dataplane_token.map(|t| t.expose().to_owned()),
            master_key: options.master_key.map(|k| k.expose().to_owned()),
            usage_retention: options.usage_retention,
            audit_retention: options.audit_retention,
            tls: options.grpc_tls.clone(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            leases: options.leases,
        },
        control_shutdown.clone(),
    )
    .await
    .context("starting the control plane")?;
    if let Some(path) = control_plane.created_token_file() {
        tracing::info!(
            path = %path.display(),
            "created an admin token; `drover --db {}` reads it from there",
            db.display()
        );
    }

    let mut config = dataplane_config(
        options.http,
        control_plane.grpc_addr(),
        options.grpc_tls.as_ref(),
        control_plane.admin_token(),
    );
    config.local_usage = Some(control_plane.local_usage());
    let started = match options.proxy.apply(&mut config) {
        Ok(()) => DataPlane::start(config, shutdown.clone())
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    let data_plane = match started {
        Ok(dp) => dp,
        Err(e) => {
            shutdown.cancel();
            control_shutdown.cancel();
            if let Err(stop) = control_plane.wait().await {
                tracing::warn!(error = %stop, "stopping the control plane");
            }
            return Err(e).context("starting the data plane");
        }
    };
    tracing::info!(
        "drover is serving: OpenAI and Anthropic APIs on http://{}, admin API on {}://{}",
        data_plane.http_addr(),
        if options.grpc_tls.is_some() {
            "https"
        } else {
            "http"
        },
        control_plane.grpc_addr()
    );

    let control = async {
        let stopped = control_plane.wait().await;
        shutdown.cancel();
        stopped.context("control plane")
    };
    let data = async {
        let stopped = data_plane.wait().await;
        shutdown.cancel();
        control_shutdown.cancel();
        stopped.context("data plane")
    };
    let (control, data) = tokio::join!(control, data);
    control?;
    data?;
    tracing::info!("drover stopped");
    Ok(())
}

/// The in-process data plane: the usual defaults, the environment of this process for
/// `env:VAR` credentials, the control plane over loopback with the admin token. With TLS on,
/// it connects over TLS and accepts exactly the certificate the listener serves: loopback is
/// rarely a name that certificate carries.
fn dataplane_config(
    http: SocketAddr,
    grpc: SocketAddr,
    tls: Option<&GrpcTls>,
    token: &Secret,
) -> drover_dataplane::Config {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut config = drover_dataplane::Config::new(
        http,
        format!("{scheme}://{}", loopback_if_unspecified(grpc)),
        drover_dataplane::process_env(),
    );
    if let Some(tls) = tls {
        config.control_plane_trust = Trust::Pinned(tls.certificate().clone());
    }
    config.token = Some(token.clone());
    config.dataplane_id = DATAPLANE_ID.to_owned();
    config
}

/// `0.0.0.0:p` and `[::]:p` are where to listen, not where to connect: use loopback.
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    fn serve_args(argv: &[&str]) -> (ServeArgs, GlobalArgs) {
        let cli = parse(argv);
        match cli.command {
            Command::Serve(args) => (args, cli.global),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn options_from_flags_and_environment() {
        let (args, global) = serve_args(&[
            "drover",
            "serve",
            "--db",
            "data/d.db",
            "--http",
            "0.0.0.0:9000",
            "--grpc",
            "127.0.0.1:0",
            "--token",
            "adm",
        ]);
        let env = |name: &str| match name {
            "DROVER_DATAPLANE_TOKEN" => Some("join".to_owned()),
            "DROVER_MASTER_KEY" => Some("  ".to_owned()),
            _ => None,
        };
        let o = args.into_options(&global, env).unwrap();
        assert_eq!(o.db, PathBuf::from("data/d.db"));
        assert_eq!(o.http, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(o.grpc, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert_eq!(o.admin_token, Some(Secret::new("adm")));
        assert_eq!(o.dataplane_token, Some(Secret::new("join")));
        assert_eq!(o.master_key, None, "blank counts as unset");
        assert_eq!(
            o.usage_retention,
            Some(drover_controlplane::DEFAULT_USAGE_RETENTION)
        );
        assert!(!format!("{o:?}").contains("adm\""), "secrets stay hidden: {o:?}");
    }

    #[test]
    fn usage_retention_is_in_days_and_zero_keeps_everything() {
        let (args, global) = serve_args(&["drover", "serve", "--usage-retention-days", "7"]);
        let o = args.into_options(&global, |_| None).unwrap();
        assert_eq!(o.usage_retention, Some(Duration::from_secs(7 * 24 * 3600)));
        let (args, global) = serve_args(&["drover", "serve", "--usage-retention-days", "0"]);
        assert_eq!(
            args.into_options(&global, |_| None).unwrap().usage_retention,
            None
        );
        assert!(
            parse_err(&["drover", "serve", "--usage-retention-days", "many"])
                .contains("--usage-retention-days")
        );
    }

    #[test]
    fn the_credential_env_allow_list_reaches_the_in_process_data_plane() {
        let (args, global) = serve_args(&["drover", "serve"]);
        let o = args.into_options(&global, |_| None).unwrap();
        let mut config = dataplane_config(o.http, o.grpc, None, &Secret::new("t"));
        o.proxy.apply(&mut config).unwrap();
        assert!(config.credential_env_allow.allows("OPENAI_API_KEY"));
        assert!(!config.credential_env_allow.allows("OLLAMA_TOKEN"));

        let (args, global) = serve_args(&[
            "drover",
            "serve",
            "--credential-env-allow",
            "*_API_KEY,OLLAMA_TOKEN",
        ]);
        let o = args.into_options(&global, |_| None).unwrap();
        o.proxy.apply(&mut config).unwrap();
        assert!(config.credential_env_allow.allows("OLLAMA_TOKEN"));
        assert!(parse_err(&["drover", "serve", "--credential-env-allow"]).contains("--credential-env-allow"));
    }

    #[test]
    fn db_is_the_global_option_either_side() {
        let (_, global) = serve_args(&["drover", "--db", "x.db", "serve"]);
        assert_eq!(global.db, PathBuf::from("x.db"));
        assert!(parse_err(&["drover", "serve", "--http", "localhost"]).contains("--http"));
    }

    #[test]
    fn the_data_plane_dials_loopback() {
        let cfg = dataplane_config(
            "127.0.0.1:8080".parse().unwrap(),
            "0.0.0.0:50051".parse().unwrap(),
            None,
            &Secret::new("t"),
        );
        assert_eq!(cfg.control_plane, "http://127.0.0.1:50051");
        assert_eq!(cfg.token, Some(Secret::new("t")));
        assert_eq!(cfg.dataplane_id, "local");
        assert_eq!(
            loopback_if_unspecified("[::]:7".parse().unwrap()),
            "[::1]:7".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            loopback_if_unspecified("10.0.0.1:7".parse().unwrap()),
            "10.0.0.1:7".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn grpc_tls_needs_a_certificate_and_its_key_and_the_data_plane_pins_it() {
        assert!(parse_err(&["drover", "serve", "--grpc-tls-cert", "c.pem"]).contains("--grpc-tls-key"));
        assert!(parse_err(&["drover", "serve", "--grpc-tls-key", "k.pem"]).contains("--grpc-tls-cert"));
        let (args, global) = serve_args(&["drover", "serve"]);
        assert!(args.into_options(&global, |_| None).unwrap().grpc_tls.is_none());

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem").display().to_string();
        let (args, global) = serve_args(&[
            "drover",
            "serve",
            "--grpc-tls-cert",
            &missing,
            "--grpc-tls-key",
            &missing,
        ]);
        let e = format!("{:#}", args.into_options(&global, |_| None).unwrap_err());
        assert!(
            e.contains("cannot read the TLS certificate") && e.contains("missing.pem"),
            "{e}"
        );

        let issued = rcgen::generate_simple_self_signed(vec!["cp.example".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        let (args, global) = serve_args(&[
            "drover",
            "serve",
            "--grpc-tls-cert",
            cert.to_str().unwrap(),
            "--grpc-tls-key",
            key.to_str().unwrap(),
        ]);
        let o = args.into_options(&global, |_| None).unwrap();
        let tls = o.grpc_tls.expect("TLS on");
        let cfg = dataplane_config(
            "127.0.0.1:8080".parse().unwrap(),
            "0.0.0.0:50051".parse().unwrap(),
            Some(&tls),
            &Secret::new("t"),
        );
        assert_eq!(cfg.control_plane, "https://127.0.0.1:50051");
        match cfg.control_plane_trust {
            Trust::Pinned(pinned) => assert_eq!(&pinned, issued.cert.der()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
