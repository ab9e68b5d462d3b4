//! The policy stream client: keeps one `PolicyService.Watch` stream open to the control
//! plane, applies each snapshot (compile → swap → ACK, or NACK and keep the old one) and
//! reconnects with jittered exponential backoff. An `https://` control plane is reached over
//! TLS, its certificate checked against `Config::control_plane_trust`. While the control plane
//! is away the data plane keeps serving the last policy it applied. Every message it sends
//! lists the providers and route targets of the serving policy it cannot use, so `drover
//! status` can show them.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::Secret;
use drover_proto::pb;
use drover_proto::pb::policy_service_client::PolicyServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use drover_proto::limits::{MAX_POLICY_MESSAGE_BYTES, MAX_REQUEST_BYTES};

use crate::app::AppState;
use crate::policy::{Policy, last_good};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("cannot connect: {}", causes(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

/// Runs until `shutdown` is cancelled.
pub async fn run(state: Arc<AppState>, http_addr: String, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut applied_any = false;
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&state, &http_addr, &mut applied_any) => r,
        };
        if let Err(e) = result {
            match &e {
                SessionError::Status(s) if s.code() == tonic::Code::Unauthenticated => {
                    tracing::error!(
                        "the control plane rejected this data plane's token: {}",
                        s.message()
                    );
                }
                _ => tracing::warn!(error = %e, "policy stream down; serving the last policy applied"),
            }
        }
        if applied_any {
            backoff = BACKOFF_MIN;
        }
        let wait = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to every call to the control plane (policy and usage).
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub(crate) fn new(token: Option<&Secret>) -> Self {
        Bearer(token.and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.expose())).ok()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// An error and its sources, `outer: inner`: a transport error alone only says "transport
/// error", its sources say why (refused, a certificate not trusted, ...).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// Half to all of `d`.
fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
}

async fn session(state: &AppState, http_addr: &str, applied_any: &mut bool) -> Result<(), SessionError> {
    let endpoint = Endpoint::from_shared(state.config.control_plane.clone())
        .map_err(|e| SessionError::Url(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let endpoint = drover_proto::tls::client_endpoint(endpoint, &state.config.control_plane_trust)?;
    // Counts attempts that never got a stream: unreachable, TLS refused, call refused.
    let failed = |e: SessionError| {
        state.metrics.policy_connect_failures.inc();
        e
    };
    let channel: Channel = endpoint.connect().await.map_err(|e| failed(e.into()))?;
    let mut client = PolicyServiceClient::with_interceptor(channel, Bearer::new(state.config.token.as_ref()))
        .max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);

    let (tx, rx) = mpsc::channel::<pb::WatchRequest>(8);
    let id = state.config.dataplane_id.clone();
    // Every message describes the policy served now, what it cannot use included.
    let message = |response_version: u64, error: String| {
        let serving = state.policy.load();
        let (store_id, version) = serving
            .as_ref()
            .map(|p| (p.store_id.clone(), p.version))
            .unwrap_or_default();
        pb::WatchRequest {
            dataplane_id: id.clone(),
            store_id,
            version,
            response_version,
            error,
            http_addr: http_addr.to_owned(),
            unavailable_providers: serving
                .iter()
                .flat_map(|p| p.unavailable.iter().map(Into::into))
                .collect(),
            unusable_targets: serving
                .iter()
                .flat_map(|p| p.unusable_targets.iter().map(Into::into))
                .collect(),
        }
    };
    let _ = tx.send(message(0, String::new())).await;
    let mut inbound = client
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| failed(e.into()))?
        .into_inner();
    state.metrics.policy_connects.inc();
    tracing::info!(control_plane = %state.config.control_plane, "policy stream open");

    while let Some(snapshot) = inbound.message().await? {
        let version = snapshot.version;
        match Policy::compile(
            &snapshot,
            &state.config.env,
            &state.config.credential_env_allow,
            &state.health,
        ) {
            Ok(policy) => {
                let policy = Arc::new(policy);
                state.policy.store(policy.clone());
                state.metrics.policy_applied.inc();
                *applied_any = true;
                tracing::info!(version, "policy applied");
                for u in &policy.unavailable {
                    tracing::warn!(version, provider = %u.provider, reason = %u.reason, "provider unavailable on this data plane");
                }
                for u in &policy.unusable_targets {
                    tracing::warn!(version, route = %u.route, target = %u.target, reason = %u.reason, "route target unusable on this data plane");
                }
                let _ = tx.send(message(version, String::new())).await;
                if let Some(path) = state.config.last_good.clone() {
                    let saved =
                        tokio::task::spawn_blocking(move || last_good::write(&path, &policy.encoded)).await;
                    if let Ok(Err(e)) = saved {
                        tracing::warn!(error = %e, "could not write the last-good policy file");
                    }
                }
            }
            Err(e) => {
                state.metrics.policy_rejected.inc();
                tracing::warn!(version, error = %e, "policy snapshot rejected; keeping the current one");
                let _ = tx.send(message(version, e.to_string())).await;
            }
        }
    }
    Err(SessionError::Closed)
}
