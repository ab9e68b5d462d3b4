//! `drover-controlplane`: parses arguments and the environment into a `Config`, runs the
//! control plane until ctrl-c or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use drover_controlplane::{Config, ControlPlane, DEFAULT_HANDSHAKE_TIMEOUT, TlsArgs, usage_retention_days};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Drover's control plane: the admin API and the policy stream, over one SQLite database.
///
/// Secrets come from the environment only: DROVER_ADMIN_TOKEN (else a token file beside the
/// database, created on first start), DROVER_DATAPLANE_TOKEN (an extra token data planes may
/// present), DROVER_MASTER_KEY (base64 of 32 bytes; else a key file beside the database).
#[derive(Parser, Debug)]
#[command(name = "drover-controlplane", version)]
struct Args {
    /// SQLite database file; created if missing.
    #[arg(long, env = "DROVER_DB", default_value = "drover.db")]
    db: PathBuf,
    /// Address for gRPC (admin API, policy stream, usage, reflection, health).
    #[arg(long, env = "DROVER_GRPC", default_value = "127.0.0.1:50051")]
    grpc: SocketAddr,
    /// Days raw usage records are kept before they are compacted into daily totals; 0 keeps
    /// them forever.
    #[arg(
        long,
        env = "DROVER_USAGE_RETENTION_DAYS",
        default_value_t = 30,
        value_name = "DAYS"
    )]
    usage_retention_days: u32,
    #[command(flatten)]
    tls: TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = TlsArgs::standalone(Args::command()).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();

    let config = Config {
        db_path: args.db,
        grpc_addr: args.grpc,
        admin_token: secret_from_env("DROVER_ADMIN_TOKEN")?,
        dataplane_token: secret_from_env("DROVER_DATAPLANE_TOKEN")?,
        master_key: secret_from_env("DROVER_MASTER_KEY")?,
        usage_retention: usage_retention_days(args.usage_retention_days),
        tls: args.tls.load()?,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let control_plane = ControlPlane::start(config, shutdown)
        .await
        .context("starting the control plane")?;
    if let Some(path) = control_plane.created_token_file() {
        tracing::info!(path = %path.display(), "created an admin token; `drover --db` reads it from there");
    }
    control_plane.wait().await.context("control plane stopped")?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// An optional secret from the environment; set but empty counts as unset.
fn secret_from_env(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{name} is not valid UTF-8"),
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
