//! `drover-dataplane`: the proxy, fed by a control plane.

use clap::Parser;
use drover_dataplane::{Args, DataPlane, process_env};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "drover-dataplane",
    version,
    about = "Drover data plane: the LLM proxy"
)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let config = Cli::parse().args.into_config(process_env())?;
    let shutdown = CancellationToken::new();
    let dp = DataPlane::start(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        shutdown_signal().await;
        shutdown.cancel();
    });
    dp.wait().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
