//! Wiring: the HTTP router, the policy client, the usage reporter and the server task, around
//! the shared [`AppState`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, get, post};
use http::{HeaderValue, Method};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::admin;
use crate::config::Config;
use crate::limits;
use crate::policy::{Policy, client, last_good};
use crate::proxy;
use crate::server;
use crate::state::AppState;
use crate::usage::{self, ReporterError};

/// A POST route; other methods get a 405 in the API's error shape.
fn post_only<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    post(handler).fallback(proxy::method_not_allowed)
}

/// The data plane's HTTP routes, with CORS headers for the configured origins only.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = cors(&state.config.cors_origins);
    let router = Router::new()
        .route("/v1/chat/completions", post_only(proxy::chat_completions))
        .route("/v1/completions", post_only(proxy::completions))
        .route("/v1/embeddings", post_only(proxy::embeddings))
        .route("/v1/responses", post_only(proxy::responses))
        .route("/v1/messages", post_only(proxy::messages))
        .route("/v1/messages/count_tokens", post_only(proxy::count_tokens))
        .route(
            "/v1/models",
            get(proxy::models).fallback(proxy::method_not_allowed),
        )
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .fallback(proxy::not_found)
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Browsers may call the API from pages of `origins` (`*`: any page); none by default, and
/// then no CORS header is ever sent.
fn cors(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(
                [
                    proxy::X_REQUEST_ID,
                    proxy::X_DROVER_PROVIDER,
                    proxy::X_DROVER_MODEL,
                    proxy::X_DROVER_CACHE,
                    proxy::X_DROVER_COST_USD,
                    proxy::X_DROVER_DROPPED,
                    proxy::X_DROVER_SPEND_WARNING,
                    http::header::RETRY_AFTER,
                ]
                .into_iter()
                .chain(crate::formats::ratelimit::header_names())
                .collect::<Vec<_>>(),
            )
            .max_age(Duration::from_secs(600)),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start usage reporting: {0}")]
    Usage(#[from] ReporterError),
}

/// A running data plane.
pub struct DataPlane {
    http_addr: SocketAddr,
    state: Arc<AppState>,
    server: JoinHandle<std::io::Result<()>>,
    policy: JoinHandle<()>,
    usage: JoinHandle<()>,
}

impl DataPlane {
    /// Binds the HTTP listener, loads the last-good policy and the usage spool file if
    /// configured, and starts the policy client, the usage reporter and the server. Runs
    /// until `shutdown` is cancelled; the usage reporter stops (after a last flush) once the
    /// server has finished its in-flight requests, so their records are reported too.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<DataPlane, StartError> {
        let addr = config.http_addr;
        let listener = server::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let state = Arc::new(AppState::new(config));
        load_last_good(&state).await;
        let usage_stop = CancellationToken::new();
        let usage = usage::reporter::start(
            &state.usage,
            usage::Upstream::new(&state.config),
            usage_stop.clone(),
        )
        .await?;

        let watch = client::Watch::new(
            &state.config,
            http_addr.to_string(),
            state.policy.clone(),
            state.health.clone(),
            state.limiter.table.clone(),
            state.metrics.clone(),
        );
        let policy = tokio::spawn(client::run(watch, shutdown.clone()));
        if let Some(asks) = state.limiter.take_asks() {
            let core =
                limits::client::Core::new(state.limiter.clone(), asks, state.config.dataplane_id.clone());
            tokio::spawn(limits::client::run(
                core,
                crate::control::Link::new(&state.config),
                shutdown.clone(),
            ));
        }
        let app = router(state.clone());
        let mut listener_config = state.config.listener.clone();
        if let Some(fit) = server::fd_bound_connections()
            && fit < listener_config.max_connections
        {
            tracing::warn!(
                max_connections = listener_config.max_connections,
                lowered_to = fit,
                "the open-file limit is too low for --max-connections; raise it (ulimit -n) to allow more"
            );
            listener_config.max_connections = fit;
        }
        let metrics = state.metrics.clone();
        let server = tokio::spawn(async move {
            let _stop_usage = usage_stop.drop_guard();
            server::serve(listener, app, listener_config, metrics, shutdown).await
        });
        tracing::info!(%http_addr, "data plane listening");
        Ok(DataPlane {
            http_addr,
            state,
            server,
            policy,
            usage,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Version of the policy being served, if any.
    pub fn policy_version(&self) -> Option<u64> {
        self.state.policy.serving().map(|(_, v)| v)
    }

    /// Waits for the server, the policy client and the usage reporter to stop.
    pub async fn wait(self) -> std::io::Result<()> {
        let served = self.server.await.unwrap_or(Ok(()));
        let _ = self.policy.await;
        let _ = self.usage.await;
        served
    }
}

async fn load_last_good(state: &Arc<AppState>) {
    let Some(path) = state.config.last_good.clone() else {
        return;
    };
    let read = tokio::task::spawn_blocking(move || last_good::read(&path)).await;
    match read {
        Ok(Ok(Some(snapshot))) => match Policy::compile(
            &snapshot,
            &state.config.env,
            &state.config.credential_env_allow,
            &state.health,
            &state.limiter.table,
        ) {
            Ok(policy) => {
                tracing::info!(
                    version = policy.version,
                    "serving the last-good policy until the control plane answers"
                );
                state.policy.store(Arc::new(policy));
            }
            Err(e) => tracing::warn!(error = %e, "the last-good policy file is not valid; ignoring it"),
        },
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the last-good policy file; ignoring it"),
        Err(_) => {}
    }
}
