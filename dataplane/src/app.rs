//! Wiring: the shared state, the HTTP router, the policy client, the usage reporter and the
//! server task.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Metrics};
use crate::cache::ResponseCache;
use crate::config::Config;
use crate::policy::{Policy, PolicyStore, client, last_good};
use crate::providers::{HttpClient, http_client};
use crate::proxy::{self, health::HealthRegistry, health::RetryBudget};
use crate::usage::{self, ReporterError, Usage};

/// State shared by every request. The policy inside is swapped whole; the rest lives as long as the process.
pub struct AppState {
    pub config: Config,
    pub policy: PolicyStore,
    pub health: HealthRegistry,
    pub budget: RetryBudget,
    pub client: HttpClient,
    pub metrics: Arc<Metrics>,
    /// Where requests hand their usage records.
    pub usage: Usage,
    /// Answers of routes with a cache TTL.
    pub cache: ResponseCache,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        AppState {
            usage: Usage::new(config.usage.clone(), metrics.clone()),
            budget: RetryBudget::new(config.proxy.retry_ratio, config.proxy.retry_min_per_sec),
            client: http_client(config.proxy.connect_timeout),
            cache: ResponseCache::new(config.cache_max_bytes),
            config,
            policy: PolicyStore::default(),
            health: HealthRegistry::default(),
            metrics,
        }
    }
}

/// A POST route; other methods get a 405 in the API's error shape.
fn post_only<H, T>(handler: H) -> MethodRouter<Arc<AppState>>
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    post(handler).fallback(proxy::method_not_allowed)
}

/// The data plane's HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
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
        .with_state(state)
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
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
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

        let policy = tokio::spawn(client::run(
            state.clone(),
            http_addr.to_string(),
            shutdown.clone(),
        ));
        let app = router(state.clone());
        // Without TCP_NODELAY, Nagle's algorithm holds back small stream events.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _stop_usage = usage_stop.drop_guard();
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
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
