//! What the end-to-end tests of the control plane share: a control plane on 127.0.0.1:0 with its
//! database in a tempdir, authenticated calls, admin requests, and a data plane's end of a policy
//! stream.

#![allow(dead_code, reason = "each test file uses a part of these helpers")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use drover_controlplane::{Config, ControlPlane, DEFAULT_HANDSHAKE_TIMEOUT, LeaseTiming, SHUTDOWN_GRACE};
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::policy_service_client::PolicyServiceClient;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::transport::Channel;

pub const ADMIN: &str = "admin-test-token";
pub const DATAPLANE: &str = "dataplane-test-token";
pub const PLAINTEXT_KEY: &str = "sk-plaintext-marker-8d21e7";
/// Bounds every wait, so a regression fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn config(dir: &Path, grpc_addr: SocketAddr) -> Config {
    Config {
        db_path: dir.join("drover.db"),
        grpc_addr,
        admin_token: Some(ADMIN.into()),
        dataplane_token: Some(DATAPLANE.into()),
        master_key: None,
        usage_retention: None,
        audit_retention: None,
        tls: None,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        leases: LeaseTiming::default(),
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub async fn start(config: Config) -> (ControlPlane, CancellationToken) {
    let shutdown = CancellationToken::new();
    let cp = ControlPlane::start(config, shutdown.clone()).await.unwrap();
    (cp, shutdown)
}

/// Cancels and waits; must finish well inside `SHUTDOWN_GRACE`, i.e. without waiting it out.
pub async fn stop(cp: ControlPlane, shutdown: CancellationToken) {
    shutdown.cancel();
    timeout(SHUTDOWN_GRACE / 2, cp.wait())
        .await
        .expect("wait() hung")
        .unwrap();
}

pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub async fn admin(cp: &ControlPlane) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap()
}

pub async fn version(client: &mut AdminServiceClient<Channel>) -> u64 {
    client
        .status(authed(pb::StatusRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner()
        .version
}

pub fn add_provider(name: &str) -> pb::AddProviderRequest {
    pb::AddProviderRequest {
        name: name.into(),
        kind: pb::ProviderKind::Openai as i32,
        base_url: "https://api.openai.com/v1".into(),
        credential: Some(pb::add_provider_request::Credential::ApiKey(PLAINTEXT_KEY.into())),
        replace: false,
        api_version: String::new(),
        responses_api: 0,
    }
}

pub fn set_route(alias: &str, provider: &str) -> pb::SetRouteRequest {
    pb::SetRouteRequest {
        route: Some(pb::Route {
            alias: alias.into(),
            strategy: pb::RouteStrategy::Fallback as i32,
            targets: vec![pb::Target {
                provider: provider.into(),
                model: "gpt-4o-mini".into(),
                weight: 0,
            }],
            cache_ttl_secs: 0,
            retry_after_send: false,
        }),
    }
}

pub fn set_module(name: &str, enabled: bool) -> pb::SetModuleRequest {
    pb::SetModuleRequest {
        name: name.into(),
        enabled,
    }
}

/// A custom price: a change that bumps the policy version.
pub fn set_price(model: &str, input_per_mtok: f64) -> pb::SetPriceRequest {
    pb::SetPriceRequest {
        price: Some(pb::Price {
            model: model.into(),
            input_per_mtok,
            output_per_mtok: 1.0,
            cached_input_per_mtok: None,
            source: String::new(),
        }),
    }
}

/// A data plane's end of a policy stream.
pub struct Watcher {
    pub tx: mpsc::Sender<pb::WatchRequest>,
    pub inbound: tonic::Streaming<pb::Snapshot>,
    pub id: String,
}

impl Watcher {
    pub async fn open(cp: &ControlPlane, token: &str, id: &str, serves: Option<(&str, u64)>) -> Watcher {
        Self::try_open(cp, token, id, serves).await.unwrap()
    }

    pub async fn try_open(
        cp: &ControlPlane,
        token: &str,
        id: &str,
        serves: Option<(&str, u64)>,
    ) -> Result<Watcher, tonic::Status> {
        let mut client = PolicyServiceClient::connect(format!("http://{}", cp.grpc_addr()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (store_id, version) = serves.unwrap_or(("", 0));
        tx.send(pb::WatchRequest {
            dataplane_id: id.into(),
            store_id: store_id.into(),
            version,
            response_version: 0,
            error: String::new(),
            http_addr: "127.0.0.1:8080".into(),
            unavailable_providers: vec![],
            unusable_targets: vec![],
        })
        .await
        .unwrap();
        let inbound = client
            .watch(authed(ReceiverStream::new(rx), token))
            .await?
            .into_inner();
        Ok(Watcher {
            tx,
            inbound,
            id: id.into(),
        })
    }

    pub async fn next(&mut self) -> pb::Snapshot {
        timeout(PATIENCE, self.inbound.message())
            .await
            .expect("no snapshot came")
            .unwrap()
            .expect("stream ended")
    }

    pub async fn answer(&self, version: u64, error: &str) {
        self.tx
            .send(pb::WatchRequest {
                dataplane_id: self.id.clone(),
                response_version: version,
                error: error.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// Polls Status until `check` holds for data plane `id` (ACKs are recorded asynchronously).
pub async fn await_dataplane(
    client: &mut AdminServiceClient<Channel>,
    id: &str,
    check: impl Fn(&pb::DataPlaneStatus) -> bool,
) -> pb::DataPlaneStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = client
            .status(authed(pb::StatusRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        if let Some(dp) = status.dataplanes.iter().find(|d| d.id == id)
            && check(dp)
        {
            return dp.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never matched: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
