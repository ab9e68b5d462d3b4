//! The policy stream client: keeps one `PolicyService.Watch` stream open to the control
//! plane, applies each snapshot (compile → swap → ACK, or NACK and keep the old one) and
//! reconnects with jittered exponential backoff. An `https://` control plane is reached over
//! TLS, its certificate checked against `Config::control_plane_trust`. While the control plane
//! is away the data plane keeps serving the last policy it applied. Every message it sends
//! lists the providers and route targets of the serving policy it cannot use, so `drover
//! status` can show them.

use std::path::PathBuf;
use std::sync::Arc;

use drover_proto::limits::{MAX_POLICY_MESSAGE_BYTES, MAX_REQUEST_BYTES};
use drover_proto::pb;
use drover_proto::pb::policy_service_client::PolicyServiceClient;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::Config;
use crate::control::{Backoff, Link, LinkError, causes};
use crate::health::HealthRegistry;
use crate::limits::LeaseTable;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyStore, last_good};
use crate::providers::EnvLookup;
use crate::providers::credential::EnvAllowList;

/// What the policy stream needs: where the control plane is, how to compile a snapshot on
/// this data plane, and where to put the result.
pub struct Watch {
    pub link: Link,
    pub dataplane_id: String,
    /// The data plane's HTTP address, reported to `drover status`.
    pub http_addr: String,
    pub env: EnvLookup,
    pub credential_env_allow: EnvAllowList,
    pub last_good: Option<PathBuf>,
    pub store: Arc<PolicyStore>,
    pub health: Arc<HealthRegistry>,
    pub leases: Arc<LeaseTable>,
    pub metrics: Arc<Metrics>,
}

impl Watch {
    pub fn new(
        config: &Config,
        http_addr: String,
        store: Arc<PolicyStore>,
        health: Arc<HealthRegistry>,
        leases: Arc<LeaseTable>,
        metrics: Arc<Metrics>,
    ) -> Watch {
        Watch {
            link: Link::new(config),
            dataplane_id: config.dataplane_id.clone(),
            http_addr,
            env: config.env.clone(),
            credential_env_allow: config.credential_env_allow.clone(),
            last_good: config.last_good.clone(),
            store,
            health,
            leases,
            metrics,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot connect: {}", causes(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

/// At most one last-good write per this long: under a burst of key changes the file follows
/// the newest version, not every one.
const LAST_GOOD_EVERY: Duration = Duration::from_secs(1);

/// Writes each policy sent on `policies` to the last-good file, whole, at most once per
/// [`LAST_GOOD_EVERY`]. Ends when the sender is dropped.
async fn save_last_good(path: PathBuf, mut policies: watch::Receiver<Option<Arc<Policy>>>) {
    while policies.changed().await.is_ok() {
        let Some(policy) = policies.borrow_and_update().clone() else {
            continue;
        };
        let path = path.clone();
        let saved = tokio::task::spawn_blocking(move || {
            last_good::write(&path, &prost::Message::encode_to_vec(&policy.to_wire()))
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "could not write the last-good policy file");
        }
        tokio::time::sleep(LAST_GOOD_EVERY).await;
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(watch: Watch, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    let (applied, policies) = watch::channel(None);
    if let Some(path) = watch.last_good.clone() {
        tokio::spawn(save_last_good(path, policies));
    }
    loop {
        let mut applied_any = false;
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&watch, &applied, &mut applied_any) => r,
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
            backoff.reset();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

async fn session(
    w: &Watch,
    applied: &watch::Sender<Option<Arc<Policy>>>,
    applied_any: &mut bool,
) -> Result<(), SessionError> {
    let endpoint = w.link.endpoint()?;
    // Counts attempts that never got a stream: unreachable, TLS refused, call refused.
    let failed = |e: SessionError| {
        w.metrics.policy_connect_failures.inc();
        e
    };
    let channel: Channel = endpoint.connect().await.map_err(|e| failed(e.into()))?;
    let mut client = PolicyServiceClient::with_interceptor(channel, w.link.bearer())
        .max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);

    let (tx, rx) = mpsc::channel::<pb::WatchRequest>(8);
    let id = w.dataplane_id.clone();
    // Every message describes the policy served now, what it cannot use included.
    let message = |response_version: u64, error: String| {
        let serving = w.store.load();
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
            http_addr: w.http_addr.clone(),
            unavailable_providers: serving
                .iter()
                .flat_map(|p| p.config.unavailable.iter().map(Into::into))
                .collect(),
            unusable_targets: serving
                .iter()
                .flat_map(|p| p.config.unusable_targets.iter().map(Into::into))
                .collect(),
        }
    };
    let _ = tx.send(message(0, String::new())).await;
    let mut inbound = client
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| failed(e.into()))?
        .into_inner();
    w.metrics.policy_connects.inc();
    tracing::info!(control_plane = %w.link.url, "policy stream open");

    while let Some(update) = inbound.message().await? {
        let version = update.version;
        // A delta builds on the policy served now.
        // Compiled off the runtime's worker threads: the policy's long-lived maps (100,000 keys
        // and more) then live in the allocator arena of a thread that serves no requests, and
        // years of deltas do not fragment the heap the request path allocates from.
        let (serving, env, allow, health, leases) = (
            w.store.load(),
            w.env.clone(),
            w.credential_env_allow.clone(),
            w.health.clone(),
            w.leases.clone(),
        );
        let compiled = tokio::task::spawn_blocking(move || match serving {
            Some(serving) => serving.apply(&update, &env, &allow, &health, &leases),
            None => Policy::compile(&update, &env, &allow, &health, &leases),
        })
        .await
        .unwrap_or_else(|e| {
            Err(drover_proto::model::InvalidPolicy::new(
                "snapshot",
                format!("compiling it failed: {e}"),
            ))
        });
        match compiled {
            Ok(policy) => {
                let policy = Arc::new(policy);
                w.store.store(policy.clone());
                w.metrics.policy_applied.inc();
                *applied_any = true;
                tracing::info!(version, "policy applied");
                for u in &policy.config.unavailable {
                    tracing::warn!(version, provider = %u.provider, reason = %u.reason, "provider unavailable on this data plane");
                }
                for u in &policy.config.unusable_targets {
                    tracing::warn!(version, route = %u.route, target = %u.target, reason = %u.reason, "route target unusable on this data plane");
                }
                let _ = tx.send(message(version, String::new())).await;
                applied.send_replace(Some(policy));
            }
            Err(e) => {
                w.metrics.policy_rejected.inc();
                tracing::warn!(version, error = %e, "policy snapshot rejected; keeping the current one");
                let _ = tx.send(message(version, e.to_string())).await;
            }
        }
    }
    Err(SessionError::Closed)
}
