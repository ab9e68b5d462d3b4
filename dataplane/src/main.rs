//! `drover-dataplane`: the proxy, fed by a control plane.

use clap::Parser;
use drover_dataplane::{Args, DataPlane, process_env};
use drover_proto::process;
use tokio_util::sync::CancellationToken;

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
    process::init_tracing();
    let config = Cli::parse().args.into_config(process_env())?;
    let shutdown = CancellationToken::new();
    let dp = DataPlane::start(config, shutdown.clone()).await?;
    tokio::spawn(process::cancel_on_signal(shutdown));
    dp.wait().await?;
    Ok(())
}
