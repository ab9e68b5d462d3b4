//! `drover-controlplane`: parses arguments and the environment into a `Config`, runs the
//! control plane until ctrl-c or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use drover_controlplane::{
    Config, ControlArgs, ControlPlane, DEFAULT_HANDSHAKE_TIMEOUT, TlsArgs, usage_retention_days,
};
use drover_proto::process;
use tokio_util::sync::CancellationToken;

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
    #[command(flatten)]
    control: ControlArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let matches = TlsArgs::standalone(Args::command()).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    process::init_tracing();

    let config = Config {
        db_path: args.db,
        grpc_addr: args.control.grpc,
        admin_token: secret_from_env("DROVER_ADMIN_TOKEN")?,
        dataplane_token: secret_from_env("DROVER_DATAPLANE_TOKEN")?,
        master_key: secret_from_env("DROVER_MASTER_KEY")?,
        usage_retention: usage_retention_days(args.control.usage_retention_days),
        audit_retention: usage_retention_days(args.control.audit_retention),
        tls: args.control.tls.load()?,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        leases: args.control.lease_timing()?,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(process::cancel_on_signal(shutdown.clone()));

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
