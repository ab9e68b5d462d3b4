//! What every Drover binary does around its work: logging set up the same way, and a clean
//! stop on Ctrl-C or SIGTERM. One definition for `drover`, `drover-controlplane` and
//! `drover-dataplane`.

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Logs to stdout; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM; returns early if it is cancelled otherwise. A
/// signal that cannot be listened for is logged, and the other still works.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
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
        () = shutdown.cancelled() => return,
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
