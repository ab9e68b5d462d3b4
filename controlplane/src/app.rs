//! Wiring: from a `Config` to a running control plane, and back down.
//!
//! `ControlPlane::start` resolves the secrets beside the database, opens the store, binds the
//! gRPC listener (plaintext or TLS, each connection under a handshake deadline: `listener`)
//! and spawns one tonic server carrying AdminService, PolicyService, UsageService,
//! reflection and health, and the usage retention task. Cancelling the shutdown
//! token stops accepting, ends every policy stream and lets in-flight calls finish; `wait`
//! returns once the server has stopped and the database is closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::Secret;
use drover_proto::pb;
use drover_proto::pb::admin_service_server::AdminServiceServer;
use drover_proto::pb::policy_service_server::PolicyServiceServer;
use drover_proto::pb::usage_service_server::{UsageService, UsageServiceServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};

use crate::admin_service::AdminApi;
use crate::auth::{self, AdminToken, TokenCheck};
use crate::config::{Config, master_key_file_for};
use crate::error::{StartError, StopError};
use crate::listener::Incoming;
use crate::policy_service::{DataPlanes, PolicyApi};
use crate::secret_file;
use crate::store::crypto::MasterKey;
use crate::store::{Store, StoreThread};
use crate::usage_service::{UsageApi, run_retention};
use drover_proto::limits::{MAX_POLICY_MESSAGE_BYTES, MAX_REQUEST_BYTES, MAX_USAGE_MESSAGE_BYTES};

/// HTTP/2 pings on idle connections, so a vanished data plane is noticed.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive probes on idle connections, below HTTP/2 (e.g. through a NAT).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Most concurrent calls (HTTP/2 streams) on one connection. A data plane uses one for its
/// policy stream and one at a time for usage reports; the CLI one per command.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long, after shutdown, open connections may take to finish their calls before the
/// server stops waiting for them (e.g. a client watching health forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running control plane.
pub struct ControlPlane {
    grpc_addr: SocketAddr,
    admin_token: Secret,
    created_token_file: Option<PathBuf>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    retention: JoinHandle<()>,
    store: Store,
    store_thread: StoreThread,
    stop: CancellationToken,
}

/// The secrets and files resolved before the store opens.
struct Prepared {
    admin: AdminToken,
    dataplane_token: Option<Secret>,
    master_key: MasterKey,
}

impl ControlPlane {
    /// Opens (creating or migrating) the store, binds the gRPC listener and spawns the server.
    /// Returns once the listener accepts connections. Cancelling `shutdown` stops everything;
    /// then call `wait`.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ControlPlane, StartError> {
        let prepared = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || prepare(&config))
                .await
                .map_err(|e| StartError::Task(e.to_string()))??
        };
        let (store, store_thread) =
            Store::open(&config.db_path, prepared.master_key)
                .await
                .map_err(|source| StartError::Store {
                    path: config.db_path.clone(),
                    source,
                })?;
        let stop = shutdown.child_token();
        let listening = listen(
            &config,
            &store,
            &prepared.admin.token,
            prepared.dataplane_token,
            &stop,
        )
        .await;
        let (grpc_addr, server) = match listening {
            Ok(listening) => listening,
            Err(e) => {
                if let Err(close) = store_thread.close().await {
                    tracing::warn!(error = %close, "closing the store after a failed start");
                }
                return Err(e);
            }
        };
        let retention = tokio::spawn(run_retention(
            store.clone(),
            config.usage_retention(),
            stop.clone(),
        ));
        let snapshot = store.current();
        tracing::info!(
            addr = %grpc_addr,
            tls = config.tls.is_some(),
            db = %config.db_path.display(),
            store_id = %snapshot.store_id,
            version = snapshot.version,
            "control plane serving gRPC"
        );
        Ok(ControlPlane {
            grpc_addr,
            admin_token: prepared.admin.token,
            created_token_file: prepared.admin.created_file,
            server,
            retention,
            store,
            store_thread,
            stop,
        })
    }

    /// The address the gRPC server is bound to (the actual port when the config said 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin token in force.
    pub fn admin_token(&self) -> &Secret {
        &self.admin_token
    }

    /// `UsageService` for a data plane in this process (`drover serve`) to call directly: the
    /// same validation and exactly-once ledger as over gRPC, without encoding, connection or
    /// token (the caller is this process).
    pub fn local_usage(&self) -> Arc<dyn UsageService> {
        Arc::new(UsageApi::new(self.store.clone()))
    }

    /// The token file, when this start generated the admin token and wrote it there.
    pub fn created_token_file(&self) -> Option<&Path> {
        self.created_token_file.as_deref()
    }

    /// Waits until the server has stopped (after `shutdown` is cancelled, or on a server
    /// error) and the store thread has closed the database. Afterwards the same database and
    /// address can be opened again.
    pub async fn wait(self) -> Result<(), StopError> {
        let served = self.server.await;
        // If the server ended on its own, end the policy streams too.
        self.stop.cancel();
        // A retention pass in progress is cut between two of its transactions.
        self.retention.abort();
        let _ = self.retention.await;
        let closed = self.store_thread.close().await;
        match served {
            Err(e) => Err(StopError::Task(format!("gRPC server task: {e}"))),
            Ok(Err(e)) => Err(StopError::Serve(e)),
            Ok(Ok(())) => closed.map_err(StopError::Task),
        }
    }
}

/// File work before the store opens (blocking): the database directory, the admin token, the
/// data plane token and the master key.
fn prepare(config: &Config) -> Result<Prepared, StartError> {
    if let Some(dir) = config.db_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StartError::File {
            path: dir.to_owned(),
            source,
        })?;
    }
    let admin = auth::resolve_admin_token(config.admin_token.as_deref(), &config.db_path)?;
    let dataplane_token = config
        .dataplane_token
        .as_deref()
        .map(|t| auth::non_empty("the data plane token", t))
        .transpose()?;
    let master_key = match &config.master_key {
        Some(encoded) => MasterKey::from_base64(encoded)
            .map_err(|e| StartError::Config(format!("DROVER_MASTER_KEY: {e}")))?,
        None => master_key_from_file(&config.db_path)?,
    };
    Ok(Prepared {
        admin,
        dataplane_token,
        master_key,
    })
}

/// The master key in the file beside the database, created with the database.
fn master_key_from_file(db_path: &Path) -> Result<MasterKey, StartError> {
    let path = master_key_file_for(db_path);
    if db_path.exists() && !path.exists() {
        return Err(StartError::Config(format!(
            "the database {} exists but its master key file {} does not; restore the file or set \
             DROVER_MASTER_KEY to the key the database was created with",
            db_path.display(),
            path.display()
        )));
    }
    let (encoded, created) = secret_file::load_or_create(&path, || MasterKey::generate().to_base64())?;
    if created {
        tracing::info!(path = %path.display(), "created the master key file; back it up with the database");
    }
    MasterKey::from_base64(&encoded).map_err(|e| StartError::Config(format!("{}: {e}", path.display())))
}

/// Binds the listener and spawns the server. Returns the bound address.
async fn listen(
    config: &Config,
    store: &Store,
    admin_token: &Secret,
    dataplane_token: Option<Secret>,
    stop: &CancellationToken,
) -> Result<(SocketAddr, JoinHandle<Result<(), tonic::transport::Error>>), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: config.grpc_addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(bind_error)?;
    let grpc_addr = listener.local_addr().map_err(bind_error)?;
    let tcp = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE));
    let incoming = Incoming::new(
        tcp,
        config.tls.as_ref().map(|tls| tls.server_config()),
        config.handshake_timeout,
    );
    let router = router(store, admin_token, dataplane_token.as_ref(), stop).await?;
    let server = tokio::spawn(serve(router, incoming, stop.clone()));
    Ok((grpc_addr, server))
}

async fn router(
    store: &Store,
    admin_token: &Secret,
    dataplane_token: Option<&Secret>,
    stop: &CancellationToken,
) -> Result<Router, StartError> {
    let dataplanes = Arc::new(DataPlanes::default());
    let admin = AdminServiceServer::new(AdminApi::new(store.clone(), dataplanes.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    let policy = PolicyServiceServer::new(PolicyApi::new(store.clone(), dataplanes, stop.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    let usage = UsageServiceServer::new(UsageApi::new(store.clone()))
        .max_decoding_message_size(MAX_USAGE_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_USAGE_MESSAGE_BYTES);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServiceServer<AdminApi>>()
        .await;
    health_reporter
        .set_serving::<PolicyServiceServer<PolicyApi>>()
        .await;
    health_reporter
        .set_serving::<UsageServiceServer<UsageApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    Ok(Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .add_service(InterceptedService::new(admin, TokenCheck::admin(admin_token)))
        .add_service(InterceptedService::new(
            policy,
            TokenCheck::dataplane(admin_token, dataplane_token),
        ))
        .add_service(InterceptedService::new(
            usage,
            TokenCheck::dataplane(admin_token, dataplane_token),
        ))
        .add_service(health)
        .add_service(reflection))
}

/// Serves until `stop` is cancelled and the open calls have finished, or `SHUTDOWN_GRACE`
/// after the cancellation, whichever comes first.
async fn serve(
    router: Router,
    incoming: Incoming,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let server = router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    let grace_over = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result,
        () = grace_over => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "calls still open after shutdown; no longer waiting for them");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_proto::pb::admin_service_client::AdminServiceClient;
    use drover_proto::pb::policy_service_client::PolicyServiceClient;
    use drover_proto::pb::usage_service_client::UsageServiceClient;
    use tokio::sync::mpsc;
    use tokio::time::timeout;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::Channel;
    use tonic::{Code, Request};

    use super::*;

    const ADMIN: &str = "admin-test-token";
    const DATAPLANE: &str = "dataplane-test-token";
    const PLAINTEXT_KEY: &str = "sk-plaintext-marker-8d21e7";
    /// Bounds every wait, so a regression fails instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn config(dir: &Path, grpc_addr: SocketAddr) -> Config {
        Config {
            db_path: dir.join("drover.db"),
            grpc_addr,
            admin_token: Some(ADMIN.into()),
            dataplane_token: Some(DATAPLANE.into()),
            master_key: None,
            usage_retention: None,
            tls: None,
            handshake_timeout: crate::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn start(config: Config) -> (ControlPlane, CancellationToken) {
        let shutdown = CancellationToken::new();
        let cp = ControlPlane::start(config, shutdown.clone()).await.unwrap();
        (cp, shutdown)
    }

    /// Cancels and waits; must finish well inside `SHUTDOWN_GRACE`, i.e. without waiting it out.
    async fn stop(cp: ControlPlane, shutdown: CancellationToken) {
        shutdown.cancel();
        timeout(SHUTDOWN_GRACE / 2, cp.wait())
            .await
            .expect("wait() hung")
            .unwrap();
    }

    fn authed<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    async fn admin(cp: &ControlPlane) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(format!("http://{}", cp.grpc_addr()))
            .await
            .unwrap()
    }

    async fn version(client: &mut AdminServiceClient<Channel>) -> u64 {
        client
            .status(authed(pb::StatusRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner()
            .version
    }

    fn add_provider(name: &str) -> pb::AddProviderRequest {
        pb::AddProviderRequest {
            name: name.into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "https://api.openai.com/v1".into(),
            credential: Some(pb::add_provider_request::Credential::ApiKey(PLAINTEXT_KEY.into())),
            replace: false,
            api_version: String::new(),
        }
    }

    fn set_route(alias: &str, provider: &str) -> pb::SetRouteRequest {
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

    fn set_module(name: &str, enabled: bool) -> pb::SetModuleRequest {
        pb::SetModuleRequest {
            name: name.into(),
            enabled,
        }
    }

    /// A custom price: a change that bumps the policy version.
    fn set_price(model: &str, input_per_mtok: f64) -> pb::SetPriceRequest {
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
    struct Watcher {
        tx: mpsc::Sender<pb::WatchRequest>,
        inbound: tonic::Streaming<pb::Snapshot>,
        id: String,
    }

    impl Watcher {
        async fn open(cp: &ControlPlane, token: &str, id: &str, serves: Option<(&str, u64)>) -> Watcher {
            Self::try_open(cp, token, id, serves).await.unwrap()
        }

        async fn try_open(
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

        async fn next(&mut self) -> pb::Snapshot {
            timeout(PATIENCE, self.inbound.message())
                .await
                .expect("no snapshot came")
                .unwrap()
                .expect("stream ended")
        }

        async fn answer(&self, version: u64, error: &str) {
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
    async fn await_dataplane(
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

    #[tokio::test]
    async fn admin_api_round_trip_never_returns_a_stored_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        assert_eq!(version(&mut client).await, 1);

        let added = client
            .add_provider(authed(add_provider("openai"), ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(added.version, 2);
        assert_eq!(added.provider.unwrap().credential, "stored");
        let mut env = add_provider("anthropic");
        env.kind = pb::ProviderKind::Anthropic as i32;
        env.credential = Some(pb::add_provider_request::Credential::ApiKeyEnv(
            "ANTHROPIC_API_KEY".into(),
        ));
        client.add_provider(authed(env, ADMIN)).await.unwrap();

        let listed = client
            .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        let creds: Vec<_> = listed
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.credential.as_str()))
            .collect();
        assert_eq!(
            creds,
            [("anthropic", "env:ANTHROPIC_API_KEY"), ("openai", "stored")]
        );
        assert!(!format!("{listed:?}").contains(PLAINTEXT_KEY));

        let route = client
            .set_route(authed(set_route("fast", "openai"), ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((route.version, route.route.unwrap().targets[0].weight), (4, 1));
        let routes = client
            .list_routes(authed(pb::ListRoutesRequest {}, ADMIN))
            .await
            .unwrap();
        assert_eq!(routes.into_inner().routes[0].alias, "fast");

        let price = pb::Price {
            model: "my-model".into(),
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
            cached_input_per_mtok: None,
            source: String::new(),
        };
        let set = client
            .set_price(authed(
                pb::SetPriceRequest {
                    price: Some(price.clone()),
                },
                ADMIN,
            ))
            .await
            .unwrap();
        assert_eq!(set.into_inner().version, 5);
        let prices = client
            .list_prices(authed(pb::ListPricesRequest {}, ADMIN))
            .await
            .unwrap();
        let listed = prices.into_inner().prices;
        let mine: Vec<_> = listed.iter().filter(|p| p.source == "custom").collect();
        assert_eq!(
            mine,
            [&pb::Price {
                source: "custom".into(),
                ..price
            }]
        );
        assert!(
            listed
                .iter()
                .any(|p| p.model == "gpt-4o-mini" && p.source == "default")
        );

        // No module is implemented in this version: switching one on is refused and changes
        // nothing; switching one off is allowed.
        let err = client
            .set_module(authed(set_module("rate-limit", true), ADMIN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            "module rate_limit is not available in this version of Drover: its flag would be recorded \
             and distributed but change nothing on the request path, so it cannot be enabled"
        );
        let module = client
            .set_module(authed(set_module("rate-limit", false), ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            module.module.unwrap(),
            pb::Module {
                name: "rate_limit".into(),
                enabled: false,
                available: false,
            }
        );
        assert_eq!(module.version, 5, "it was off already");
        let modules = client
            .list_modules(authed(pb::ListModulesRequest {}, ADMIN))
            .await
            .unwrap();
        let modules: Vec<_> = modules
            .into_inner()
            .modules
            .into_iter()
            .map(|m| (m.name, m.enabled, m.available))
            .collect();
        assert_eq!(modules.len(), 5);
        assert!(modules.contains(&("rate_limit".into(), false, false)));
        assert!(modules.contains(&("auth".into(), false, false)));
        let changed = client
            .set_price(authed(set_price("other-model", 2.0), ADMIN))
            .await
            .unwrap();
        assert_eq!(changed.into_inner().version, 6);

        // Removing a provider a route uses is refused, naming the route.
        let err = client
            .remove_provider(authed(
                pb::RemoveProviderRequest {
                    name: "openai".into(),
                },
                ADMIN,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("\"fast\""), "{}", err.message());
        let err = client
            .remove_route(authed(pb::RemoveRouteRequest { alias: "nope".into() }, ADMIN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = client
            .add_provider(authed(add_provider("openai"), ADMIN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert_eq!(version(&mut client).await, 6);

        client
            .remove_route(authed(pb::RemoveRouteRequest { alias: "fast".into() }, ADMIN))
            .await
            .unwrap();
        let removed = client
            .remove_provider(authed(
                pb::RemoveProviderRequest {
                    name: "openai".into(),
                },
                ADMIN,
            ))
            .await
            .unwrap();
        assert_eq!(removed.into_inner().version, 8);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn an_azure_api_version_is_listed_and_streamed_and_refused_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        assert_eq!(watcher.next().await.version, 1);

        let mut azure = add_provider("azure");
        azure.kind = pb::ProviderKind::Azure as i32;
        azure.base_url = "https://res.openai.azure.com".into();
        azure.credential = Some(pb::add_provider_request::Credential::ApiKeyEnv(
            "AZURE_OPENAI_API_KEY".into(),
        ));
        azure.api_version = "2024-10-21".into();
        let added = client
            .add_provider(authed(azure, ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(added.version, 2);
        assert_eq!(added.provider.unwrap().api_version, "2024-10-21");
        client
            .add_provider(authed(add_provider("openai"), ADMIN))
            .await
            .unwrap();

        let listed = client
            .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        let versions: Vec<_> = listed
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.api_version.as_str()))
            .collect();
        assert_eq!(versions, [("azure", "2024-10-21"), ("openai", "")]);

        let snapshot = watcher.next().await;
        let snapshot = if snapshot.version == 2 {
            watcher.next().await
        } else {
            snapshot
        };
        assert_eq!(snapshot.version, 3);
        let streamed: Vec<_> = snapshot
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.kind, p.api_version.as_str()))
            .collect();
        assert_eq!(
            streamed,
            [
                ("azure", pb::ProviderKind::Azure as i32, "2024-10-21"),
                ("openai", pb::ProviderKind::Openai as i32, ""),
            ]
        );

        // On any other kind it is refused, and nothing is written.
        let mut versioned = add_provider("openai");
        versioned.replace = true;
        versioned.api_version = "2024-10-21".into();
        let err = client.add_provider(authed(versioned, ADMIN)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message()
                .contains("provider \"openai\"/api_version: only azure providers take an api-version"),
            "{}",
            err.message()
        );
        assert_eq!(version(&mut client).await, 3);
        let again = client
            .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, listed);
        drop(watcher);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn stored_keys_are_not_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        client
            .add_provider(authed(add_provider("openai"), ADMIN))
            .await
            .unwrap();
        // The data plane gets the key back, decrypted.
        let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        let snapshot = watcher.next().await;
        assert_eq!(
            snapshot.providers[0].credential,
            Some(pb::provider::Credential::ApiKey(PLAINTEXT_KEY.into()))
        );
        drop(watcher);
        stop(cp, shutdown).await;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes
                    .windows(PLAINTEXT_KEY.len())
                    .any(|w| w == PLAINTEXT_KEY.as_bytes())
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key_file = master_key_file_for(&dir.path().join("drover.db"));
            let mode = std::fs::metadata(key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn invalid_admin_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        client
            .add_provider(authed(add_provider("openai"), ADMIN))
            .await
            .unwrap();
        let before = version(&mut client).await;

        let mut bad_url = add_provider("other");
        bad_url.base_url = "ftp://example.com".into();
        let mut empty_name = add_provider("");
        empty_name.name = String::new();
        let mut versioned_openai = add_provider("other");
        versioned_openai.api_version = "2024-10-21".into();
        let negative = pb::SetPriceRequest {
            price: Some(pb::Price {
                model: "gpt-4o".into(),
                input_per_mtok: -1.0,
                output_per_mtok: 1.0,
                cached_input_per_mtok: None,
                source: String::new(),
            }),
        };
        let results = [
            (
                "route to an unknown provider",
                client
                    .set_route(authed(set_route("fast", "nope"), ADMIN))
                    .await
                    .map(|_| ()),
                "unknown provider \"nope\"",
            ),
            (
                "bad url",
                client.add_provider(authed(bad_url, ADMIN)).await.map(|_| ()),
                "scheme must be http",
            ),
            (
                "empty name",
                client.add_provider(authed(empty_name, ADMIN)).await.map(|_| ()),
                "must not be empty",
            ),
            (
                "api version on a non-azure provider",
                client
                    .add_provider(authed(versioned_openai, ADMIN))
                    .await
                    .map(|_| ()),
                "api_version: only azure providers take an api-version",
            ),
            (
                "negative price",
                client.set_price(authed(negative, ADMIN)).await.map(|_| ()),
                "is not a price",
            ),
            (
                "unknown module",
                client
                    .set_module(authed(set_module("telepathy", true), ADMIN))
                    .await
                    .map(|_| ()),
                "unknown module",
            ),
            (
                "missing route",
                client
                    .set_route(authed(pb::SetRouteRequest { route: None }, ADMIN))
                    .await
                    .map(|_| ()),
                "route",
            ),
        ];
        for (case, result, message) in results {
            let err = result.expect_err(case);
            assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
            assert!(err.message().contains(message), "{case}: {}", err.message());
        }
        assert_eq!(version(&mut client).await, before);
        let routes = client
            .list_routes(authed(pb::ListRoutesRequest {}, ADMIN))
            .await
            .unwrap();
        assert!(routes.into_inner().routes.is_empty());
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn route_targets_cannot_steer_provider_urls_and_drover_settings_are_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        let mut az = add_provider("az");
        az.kind = pb::ProviderKind::Azure as i32;
        az.base_url = "https://res.openai.azure.com".into();
        client.add_provider(authed(az, ADMIN)).await.unwrap();
        let mut vllm = add_provider("vllm");
        vllm.kind = pb::ProviderKind::OpenaiCompatible as i32;
        client.add_provider(authed(vllm.clone(), ADMIN)).await.unwrap();
        let route = |alias: &str, provider: &str, model: &str| {
            let mut r = set_route(alias, provider);
            if let Some(route) = r.route.as_mut() {
                route.targets[0].model = model.into();
            }
            authed(r, ADMIN)
        };
        // Body-only kinds take ids with '/' and ':'.
        client
            .set_route(route("llama", "vllm", "meta-llama/Llama-3-70b"))
            .await
            .unwrap();
        client
            .set_route(route("tagged", "vllm", "llama3:8b"))
            .await
            .unwrap();
        let before = version(&mut client).await;

        for &model in drover_proto::model::URL_STEERING_MODELS {
            let err = client.set_route(route("evil", "az", model)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{model:?}");
            assert!(
                err.message().starts_with("route \"evil\"/targets[0]/model: ")
                    && err.message().contains("cannot be used with provider kind azure")
                    && err.message().ends_with("(provider \"az\")"),
                "{model:?}: {}",
                err.message()
            );
        }
        let huge = "x".repeat(200_000);
        let err = client.set_route(route(&huge, "vllm", "m")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().len() < 300, "{} bytes", err.message().len());

        // Replacing a provider by one of a kind that cannot carry its routes' models is refused.
        let mut as_azure = vllm;
        as_azure.kind = pb::ProviderKind::Azure as i32;
        as_azure.replace = true;
        let err = client.add_provider(authed(as_azure, ADMIN)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(
                "provider \"vllm\"/kind: route \"llama\" targets this provider with a model it cannot carry: \
                 \"meta-llama/Llama-3-70b\" cannot be used with provider kind azure"
            ),
            "{}",
            err.message()
        );

        // Drover's own settings are never a credential reference.
        for var in [
            "DROVER_ADMIN_TOKEN",
            "DROVER_MASTER_KEY",
            "drover_dataplane_token",
        ] {
            let mut greedy = add_provider("greedy");
            greedy.credential = Some(pb::add_provider_request::Credential::ApiKeyEnv(var.into()));
            let err = client.add_provider(authed(greedy, ADMIN)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(
                err.message().starts_with(&format!(
                    "provider \"greedy\"/api_key_env: {var} is one of Drover's own settings (DROVER_*)"
                )),
                "{}",
                err.message()
            );
        }
        assert_eq!(version(&mut client).await, before, "nothing changed");
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn status_shows_the_providers_a_data_plane_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        let watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        let report = |version: u64, error: &str, unavailable: &[(&str, &str)]| pb::WatchRequest {
            dataplane_id: "dp-1".into(),
            response_version: version,
            error: error.into(),
            unavailable_providers: unavailable
                .iter()
                .map(|(p, r)| pb::UnavailableProvider {
                    provider: (*p).into(),
                    reason: (*r).into(),
                })
                .collect(),
            ..Default::default()
        };
        let reason = "environment variable GROQ_API_KEY is not set on this data plane";
        watcher.tx.send(report(1, "", &[("groq", reason)])).await.unwrap();
        let dp = await_dataplane(&mut client, "dp-1", |d| !d.unavailable_providers.is_empty()).await;
        assert_eq!(
            dp.unavailable_providers,
            [pb::UnavailableProvider {
                provider: "groq".into(),
                reason: reason.into(),
            }]
        );
        assert_eq!((dp.served_version, dp.last_error.as_str()), (1, ""));
        // Every message describes the snapshot served now; a later one without any clears it.
        watcher.tx.send(report(1, "", &[])).await.unwrap();
        await_dataplane(&mut client, "dp-1", |d| d.unavailable_providers.is_empty()).await;
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn a_missing_or_wrong_token_is_unauthenticated_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        let attempts = [
            Request::new(add_provider("openai")),
            authed(add_provider("openai"), "wrong"),
            authed(add_provider("openai"), DATAPLANE),
            authed(add_provider("openai"), &format!("{ADMIN}x")),
        ];
        for attempt in attempts {
            let err = client.add_provider(attempt).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
            assert_eq!(err.message(), "missing or invalid admin token");
        }
        let err = client
            .status(Request::new(pb::StatusRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(version(&mut client).await, 1);
        let listed = client
            .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
            .await
            .unwrap();
        assert!(listed.into_inner().providers.is_empty());

        // The policy stream takes the data plane token or the admin token, nothing else.
        let err = Watcher::try_open(&cp, "wrong", "dp-1", None).await.err().unwrap();
        assert_eq!(err.code(), Code::Unauthenticated);
        Watcher::open(&cp, DATAPLANE, "dp-1", None).await.next().await;
        Watcher::open(&cp, ADMIN, "dp-2", None).await.next().await;
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn watch_sends_the_current_snapshot_then_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        let first = watcher.next().await;
        assert_eq!(first.version, 1);
        assert_eq!(first.modules.len(), 5);

        client
            .set_price(authed(set_price("my-model", 3.0), ADMIN))
            .await
            .unwrap();
        let second = watcher.next().await;
        assert_eq!(
            (second.store_id.as_str(), second.version),
            (first.store_id.as_str(), 2)
        );
        assert!(
            second
                .prices
                .iter()
                .any(|p| p.model == "my-model" && p.input_per_mtok == 3.0)
        );

        // ACK, then NACK, then ACK again: Status shows each.
        watcher.answer(2, "").await;
        let dp = await_dataplane(&mut client, "dp-1", |d| d.served_version == 2).await;
        assert!(dp.connected);
        assert_eq!(dp.http_addr, "127.0.0.1:8080");
        assert!(dp.peer.starts_with("127.0.0.1:"));
        assert!(dp.last_seen_unix_ms > 0);

        client
            .add_provider(authed(add_provider("openai"), ADMIN))
            .await
            .unwrap();
        assert_eq!(watcher.next().await.version, 3);
        watcher.answer(3, "provider openai: no such env var").await;
        let dp = await_dataplane(&mut client, "dp-1", |d| d.rejected_version == 3).await;
        assert_eq!(
            (dp.served_version, dp.last_error.as_str()),
            (2, "provider openai: no such env var")
        );

        client
            .set_price(authed(set_price("my-model", 4.0), ADMIN))
            .await
            .unwrap();
        assert_eq!(watcher.next().await.version, 4);
        watcher.answer(4, "").await;
        let dp = await_dataplane(&mut client, "dp-1", |d| d.served_version == 4).await;
        assert_eq!((dp.rejected_version, dp.last_error.as_str()), (0, ""));

        // Closing the stream marks the data plane disconnected.
        drop(watcher);
        await_dataplane(&mut client, "dp-1", |d| !d.connected).await;
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn a_hello_at_the_current_version_gets_nothing_until_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        client
            .set_price(authed(set_price("my-model", 3.0), ADMIN))
            .await
            .unwrap();
        let status = client
            .status(authed(pb::StatusRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.version, 2);

        let mut current = Watcher::open(&cp, DATAPLANE, "dp-current", Some((&status.store_id, 2))).await;
        // It counts as serving version 2 straight away.
        await_dataplane(&mut client, "dp-current", |d| {
            d.served_version == 2 && d.connected
        })
        .await;
        // An old version, or another store's, gets the current snapshot at once.
        let mut old = Watcher::open(&cp, DATAPLANE, "dp-old", Some((&status.store_id, 1))).await;
        assert_eq!(old.next().await.version, 2);
        let mut foreign = Watcher::open(&cp, DATAPLANE, "dp-foreign", Some(("other-store", 2))).await;
        assert_eq!(foreign.next().await.version, 2);

        client
            .set_price(authed(set_price("my-model", 4.0), ADMIN))
            .await
            .unwrap();
        // Streams are ordered: had version 2 been sent, it would arrive before 3.
        assert_eq!(current.next().await.version, 3);
        assert_eq!(old.next().await.version, 3);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn a_stream_without_a_hello_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = PolicyServiceClient::connect(format!("http://{}", cp.grpc_addr()))
            .await
            .unwrap();
        let ack_first = pb::WatchRequest {
            dataplane_id: "dp".into(),
            response_version: 3,
            ..Default::default()
        };
        let no_id = pb::WatchRequest::default();
        for first in [ack_first, no_id] {
            let stream = tokio_stream::iter([first]);
            let mut inbound = client
                .watch(authed(stream, DATAPLANE))
                .await
                .unwrap()
                .into_inner();
            let err = timeout(PATIENCE, inbound.message()).await.unwrap().unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn shutdown_ends_open_streams_and_a_restart_resumes_on_the_same_port() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let addr = cp.grpc_addr();
        let mut client = admin(&cp).await;
        client
            .set_price(authed(set_price("my-model", 3.0), ADMIN))
            .await
            .unwrap();
        let status = client
            .status(authed(pb::StatusRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        assert_eq!(watcher.next().await.version, 2);

        stop(cp, shutdown).await;
        let end = timeout(PATIENCE, watcher.inbound.message())
            .await
            .expect("stream still open");
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");

        let (cp, shutdown) = start(config(dir.path(), addr)).await;
        assert_eq!(cp.grpc_addr(), addr);
        let mut client = admin(&cp).await;
        let again = client
            .status(authed(pb::StatusRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((again.store_id, again.version), (status.store_id, 2));
        let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        assert_eq!(watcher.next().await.version, 2);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn the_first_start_creates_the_token_file_and_later_starts_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), loopback());
        cfg.admin_token = None;
        let (cp, shutdown) = start(cfg.clone()).await;
        let token_file = crate::config::token_file_for(&cfg.db_path);
        assert_eq!(cp.created_token_file(), Some(token_file.as_path()));
        let token = cp.admin_token().clone();
        assert_eq!(
            std::fs::read_to_string(&token_file).unwrap().trim(),
            token.expose()
        );
        let mut client = admin(&cp).await;
        client
            .status(authed(pb::StatusRequest {}, token.expose()))
            .await
            .unwrap();
        stop(cp, shutdown).await;

        let (cp, shutdown) = start(cfg).await;
        assert_eq!(cp.created_token_file(), None);
        assert_eq!(cp.admin_token(), &token);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn a_bad_master_key_or_a_missing_key_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), loopback());
        let (cp, shutdown) = start(cfg.clone()).await;
        stop(cp, shutdown).await;

        let mut wrong = cfg.clone();
        wrong.master_key = Some(MasterKey::generate().to_base64());
        let err = ControlPlane::start(wrong, CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("master key"), "{err}");
        let mut malformed = cfg.clone();
        malformed.master_key = Some("short".into());
        let err = ControlPlane::start(malformed, CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, StartError::Config(_)), "{err}");

        std::fs::remove_file(master_key_file_for(&cfg.db_path)).unwrap();
        let err = ControlPlane::start(cfg, CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("master key file"), "{err}");
    }

    #[tokio::test]
    async fn health_and_reflection_need_no_token() {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let url = format!("http://{}", cp.grpc_addr());
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(channel.clone());
        for service in [
            "",
            "drover.v1.AdminService",
            "drover.v1.PolicyService",
            "drover.v1.UsageService",
        ] {
            let response = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap();
            assert_eq!(response.into_inner().status, 1, "{service} serving");
        }

        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected {response:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"drover.v1.AdminService"), "{names:?}");
        assert!(names.contains(&"drover.v1.PolicyService"), "{names:?}");
        assert!(names.contains(&"drover.v1.UsageService"), "{names:?}");
        drop(responses);
        stop(cp, shutdown).await;
    }

    /// `PRI * HTTP/2.0...`, then an empty SETTINGS frame.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    /// Reads until the server closes the connection (end of stream or an error).
    async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
        use tokio::io::AsyncReadExt as _;
        let mut sink = Vec::new();
        timeout(PATIENCE, stream.read_to_end(&mut sink))
            .await
            .expect("the control plane closes the connection")
            .ok();
    }

    /// Sends a PING on an HTTP/2 connection past its preface and reads until its ACK.
    async fn answers_a_ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let ping = b"\0\0\x08\x06\0\0\0\0\0drover!!";
        let ack = b"\0\0\x08\x06\x01\0\0\0\0drover!!";
        stream.write_all(ping).await.unwrap();
        stream.flush().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(ack.len()).any(|w| w == ack) {
            let n = timeout(PATIENCE, stream.read(&mut buf))
                .await
                .expect("an answer to the ping")
                .unwrap();
            assert!(n > 0, "the connection was closed after its preface");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn connections_without_a_handshake_in_time_are_closed_and_others_are_kept() {
        use tokio::io::AsyncWriteExt as _;
        use tokio::net::TcpStream;

        let dir = tempfile::tempdir().unwrap();
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        let tls = crate::GrpcTls::load(&cert, &key).unwrap();
        let handshake_timeout = Duration::from_millis(200);
        let mut cfg = config(dir.path(), loopback());
        cfg.handshake_timeout = handshake_timeout;

        // Plaintext: nothing, or half a preface, is closed; a whole preface is served past
        // the deadline.
        let (cp, shutdown) = start(cfg.clone()).await;
        let mut silent = TcpStream::connect(cp.grpc_addr()).await.unwrap();
        let mut partial = TcpStream::connect(cp.grpc_addr()).await.unwrap();
        partial.write_all(&PREFACE[..10]).await.unwrap();
        let mut served = TcpStream::connect(cp.grpc_addr()).await.unwrap();
        served.write_all(PREFACE).await.unwrap();
        closed(&mut silent).await;
        closed(&mut partial).await;
        tokio::time::sleep(handshake_timeout * 3).await;
        answers_a_ping(&mut served).await;
        drop(served);
        stop(cp, shutdown).await;

        // TLS: no ClientHello, or a handshake and then no preface, is closed.
        let (cp, shutdown) = start(Config {
            tls: Some(tls.clone()),
            ..cfg
        })
        .await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issued.cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(drover_proto::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut silent = TcpStream::connect(cp.grpc_addr()).await.unwrap();
        let tcp = TcpStream::connect(cp.grpc_addr()).await.unwrap();
        let mut no_preface = connector.connect(name.clone(), tcp).await.unwrap();
        let tcp = TcpStream::connect(cp.grpc_addr()).await.unwrap();
        let mut served = connector.connect(name, tcp).await.unwrap();
        assert_eq!(served.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        served.write_all(PREFACE).await.unwrap();
        closed(&mut silent).await;
        closed(&mut no_preface).await;
        tokio::time::sleep(handshake_timeout * 3).await;
        answers_a_ping(&mut served).await;
        drop(served);
        stop(cp, shutdown).await;
    }

    /// 2026-11-01T00:00Z.
    const NOV_1: i64 = 1_793_491_200_000;
    const DAY: i64 = 86_400_000;

    async fn usage_client(cp: &ControlPlane) -> UsageServiceClient<Channel> {
        UsageServiceClient::connect(format!("http://{}", cp.grpc_addr()))
            .await
            .unwrap()
    }

    fn usage(id: &str, time_unix_ms: i64, tenant: &str, model: &str, cost_nano_usd: i64) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            time_unix_ms,
            tenant: tenant.into(),
            key_id: format!("{tenant}-key"),
            alias: "fast".into(),
            provider: "openai".into(),
            model: model.into(),
            input_tokens: 1000,
            output_tokens: 100,
            cached_input_tokens: 200,
            cost_nano_usd,
            status: 200,
            ..Default::default()
        }
    }

    fn batch(records: Vec<pb::UsageRecord>) -> pb::UsageBatch {
        pb::UsageBatch {
            dataplane_id: "dp-1".into(),
            records,
        }
    }

    async fn report(client: &mut UsageServiceClient<Channel>, records: Vec<pb::UsageRecord>) -> pb::UsageAck {
        client
            .report(authed(batch(records), DATAPLANE))
            .await
            .unwrap()
            .into_inner()
    }

    fn query(group_by: pb::UsageGroupBy) -> pb::UsageQuery {
        pb::UsageQuery {
            group_by: group_by as i32,
            ..Default::default()
        }
    }

    async fn usage_report(client: &mut AdminServiceClient<Channel>, q: pb::UsageQuery) -> pb::UsageReport {
        client.query_usage(authed(q, ADMIN)).await.unwrap().into_inner()
    }

    async fn total(client: &mut AdminServiceClient<Channel>) -> pb::UsageRow {
        usage_report(client, query(pb::UsageGroupBy::Unspecified))
            .await
            .total
            .unwrap()
    }

    #[tokio::test]
    async fn usage_is_applied_exactly_once_and_an_invalid_batch_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut admin_api = admin(&cp).await;
        let mut client = usage_client(&cp).await;
        let records: Vec<_> = (0..50)
            .map(|i| {
                usage(
                    &format!("req-{i}"),
                    NOV_1 + i * 1000,
                    "acme",
                    "gpt-4o",
                    3_300_000 + i,
                )
            })
            .collect();
        let ack = report(&mut client, records.clone()).await;
        assert_eq!((ack.applied, ack.duplicates), (50, 0));
        let first = total(&mut admin_api).await;
        let cost: i64 = records.iter().map(|r| r.cost_nano_usd).sum();
        assert_eq!(
            (first.requests, first.input_tokens, first.cost_nano_usd),
            (50, 50_000, cost)
        );

        // A resend after a lost answer: all duplicates, totals unchanged.
        let ack = report(&mut client, records.clone()).await;
        assert_eq!((ack.applied, ack.duplicates), (0, 50));
        assert_eq!(total(&mut admin_api).await, first);

        // One invalid record refuses the whole batch; its valid records are not written.
        let mut bad = vec![
            usage("new-1", NOV_1, "acme", "gpt-4o", 1),
            usage("new-2", NOV_1, "acme", "gpt-4o", 1),
        ];
        bad[1].cost_nano_usd = -5;
        let err = client.report(authed(batch(bad), DATAPLANE)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("records[1]"), "{}", err.message());
        let too_many: Vec<_> = (0..=drover_proto::limits::MAX_USAGE_BATCH)
            .map(|i| usage(&format!("big-{i}"), NOV_1, "acme", "gpt-4o", 1))
            .collect();
        let err = client
            .report(authed(batch(too_many), DATAPLANE))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(total(&mut admin_api).await, first);

        // The data plane token or the admin token; nothing else.
        let ack = client
            .report(authed(batch(vec![usage("by-admin", NOV_1, "", "m", 0)]), ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.applied, 1);
        for request in [
            Request::new(batch(vec![usage("anon", NOV_1, "", "m", 0)])),
            authed(batch(vec![usage("anon", NOV_1, "", "m", 0)]), "wrong"),
        ] {
            let err = client.report(request).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
        }
        let err = admin_api
            .query_usage(authed(query(pb::UsageGroupBy::Model), DATAPLANE))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "usage is read with the admin token only"
        );
        assert_eq!(total(&mut admin_api).await.requests, 51);

        // After a restart the ledger still knows what it applied.
        let addr = cp.grpc_addr();
        stop(cp, shutdown).await;
        let (cp, shutdown) = start(config(dir.path(), addr)).await;
        let mut client = usage_client(&cp).await;
        let ack = report(&mut client, records).await;
        assert_eq!((ack.applied, ack.duplicates), (0, 50));
        assert_eq!(total(&mut admin(&cp).await).await.requests, 51);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn usage_queries_group_filter_and_refuse_bad_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut admin_api = admin(&cp).await;
        let mut client = usage_client(&cp).await;
        let mut records = vec![
            usage("a", NOV_1 + 10, "acme", "gpt-4o", 1_000_000_001),
            usage("b", NOV_1 + DAY + 10, "acme", "gpt-4o-mini", 2),
            usage("c", NOV_1 + DAY + 20, "globex", "gpt-4o", 3),
            usage("d", NOV_1 + 2 * DAY, "globex", "claude-haiku-4-5", 4),
        ];
        records[3].provider = "anthropic".into();
        records[2].cache_hit = true;
        records[2].saved_nano_usd = 77;
        records[1].failed = true;
        records[1].status = 502;
        records[0].unpriced = true;
        report(&mut client, records).await;

        let groups = |r: &pb::UsageReport| -> Vec<(String, u64, i64)> {
            r.rows
                .iter()
                .map(|row| (row.group.clone(), row.requests, row.cost_nano_usd))
                .collect()
        };
        let by_model = usage_report(&mut admin_api, query(pb::UsageGroupBy::Model)).await;
        assert_eq!(
            groups(&by_model),
            [
                ("claude-haiku-4-5".to_owned(), 1, 4),
                ("gpt-4o".to_owned(), 2, 1_000_000_004),
                ("gpt-4o-mini".to_owned(), 1, 2),
            ]
        );
        let all = by_model.total.unwrap();
        assert_eq!(
            (
                all.requests,
                all.cost_nano_usd,
                all.cache_hits,
                all.saved_nano_usd,
                all.failed,
                all.unpriced
            ),
            (4, 1_000_000_010, 1, 77, 1, 1)
        );
        assert_eq!(all.group, "");
        let by_day = usage_report(&mut admin_api, query(pb::UsageGroupBy::Day)).await;
        assert_eq!(
            groups(&by_day),
            [
                ("2026-11-01".to_owned(), 1, 1_000_000_001),
                ("2026-11-02".to_owned(), 2, 5),
                ("2026-11-03".to_owned(), 1, 4),
            ]
        );
        let by_tenant = usage_report(&mut admin_api, query(pb::UsageGroupBy::Tenant)).await;
        assert_eq!(groups(&by_tenant).len(), 2);
        let by_key = usage_report(&mut admin_api, query(pb::UsageGroupBy::Key)).await;
        assert_eq!(by_key.rows[0].group, "acme-key");
        let by_provider = usage_report(&mut admin_api, query(pb::UsageGroupBy::Provider)).await;
        assert_eq!(
            groups(&by_provider),
            [
                ("anthropic".to_owned(), 1, 4),
                ("openai".to_owned(), 3, 1_000_000_006)
            ]
        );
        // Ungrouped: one row, the total.
        let plain = usage_report(&mut admin_api, query(pb::UsageGroupBy::Unspecified)).await;
        assert_eq!(plain.rows, vec![plain.total.clone().unwrap()]);

        // Filters and a half-open range to the millisecond.
        let filtered = usage_report(
            &mut admin_api,
            pb::UsageQuery {
                tenant: "globex".into(),
                model: "gpt-4o".into(),
                since_unix_ms: NOV_1 + DAY + 20,
                until_unix_ms: NOV_1 + 2 * DAY,
                group_by: pb::UsageGroupBy::Key as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(groups(&filtered), [("globex-key".to_owned(), 1, 3)]);
        let edge = usage_report(
            &mut admin_api,
            pb::UsageQuery {
                since_unix_ms: NOV_1 + DAY + 11,
                until_unix_ms: NOV_1 + 2 * DAY,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            edge.total.unwrap().requests,
            1,
            "b at +10 is before since, c at +20 after"
        );
        let nothing = usage_report(
            &mut admin_api,
            pb::UsageQuery {
                key_id: "nobody".into(),
                group_by: pb::UsageGroupBy::Model as i32,
                ..Default::default()
            },
        )
        .await;
        assert!(nothing.rows.is_empty());
        assert_eq!(nothing.total.unwrap().requests, 0);

        for (q, want) in [
            (
                pb::UsageQuery {
                    since_unix_ms: 10,
                    until_unix_ms: 10,
                    ..Default::default()
                },
                "must be after",
            ),
            (
                pb::UsageQuery {
                    since_unix_ms: -1,
                    ..Default::default()
                },
                "must not be negative",
            ),
            (
                pb::UsageQuery {
                    group_by: 42,
                    ..Default::default()
                },
                "unknown grouping",
            ),
        ] {
            let err = admin_api.query_usage(authed(q, ADMIN)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(want), "{}", err.message());
        }
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn retention_compacts_old_records_at_start_keeping_totals_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), loopback());
        cfg.usage_retention = Some(Duration::from_secs(24 * 3600));
        let (cp, shutdown) = start(cfg.clone()).await;
        let now = crate::usage_service::now_unix_ms();
        let old: Vec<_> = (0..30)
            .map(|i| {
                usage(
                    &format!("old-{i}"),
                    now - 10 * DAY + i,
                    "acme",
                    "gpt-4o",
                    1_000 + i,
                )
            })
            .collect();
        let fresh: Vec<_> = (0..5)
            .map(|i| usage(&format!("new-{i}"), now - i, "acme", "gpt-4o", 7))
            .collect();
        let mut client = usage_client(&cp).await;
        report(&mut client, old.clone()).await;
        report(&mut client, fresh.clone()).await;
        let mut admin_client = admin(&cp).await;
        let by_day = query(pb::UsageGroupBy::Day);
        let before = usage_report(&mut admin_client, by_day.clone()).await;
        assert_eq!(before.total.as_ref().unwrap().requests, 35);
        let addr = cp.grpc_addr();
        stop(cp, shutdown).await;

        // The retention pass runs at start: the old raw rows go, the totals stay.
        let (cp, shutdown) = start(Config {
            grpc_addr: addr,
            ..cfg
        })
        .await;
        let raw_before_cutoff = || {
            let conn = rusqlite::Connection::open(dir.path().join("drover.db")).unwrap();
            conn.query_row(
                "SELECT COUNT(*) FROM usage WHERE time_unix_ms < ?1",
                [now - 2 * DAY],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while raw_before_cutoff() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "old records were never compacted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut admin_client = admin(&cp).await;
        assert_eq!(usage_report(&mut admin_client, by_day.clone()).await, before);

        let mut client = usage_client(&cp).await;
        let ack = report(&mut client, old).await;
        assert_eq!(
            (ack.applied, ack.duplicates),
            (0, 30),
            "compacted records are still known"
        );
        assert_eq!(usage_report(&mut admin_client, by_day).await, before);
        stop(cp, shutdown).await;
    }

    #[tokio::test]
    async fn prices_have_defaults_overrides_and_removal_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let (cp, shutdown) = start(config(dir.path(), loopback())).await;
        let mut client = admin(&cp).await;
        let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
        let first = watcher.next().await;
        let streamed = |s: &pb::Snapshot, key: &str| s.prices.iter().find(|p| p.model == key).cloned();
        let default = streamed(&first, "claude-sonnet-4-5").expect("defaults are in the snapshot");
        assert_eq!((default.input_per_mtok, default.output_per_mtok), (3.0, 15.0));
        assert_eq!(default.source, "", "snapshots carry no source");

        let set = |model: &str, input: f64| pb::SetPriceRequest {
            price: Some(pb::Price {
                model: model.into(),
                input_per_mtok: input,
                output_per_mtok: 1.0,
                ..Default::default()
            }),
        };
        let answer = client
            .set_price(authed(set("claude-sonnet-4-5", 2.0), ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.price.unwrap().source, "custom");
        client
            .set_price(authed(set("bedrock/claude-sonnet-4-5", 3.3), ADMIN))
            .await
            .unwrap();
        let err = client
            .set_price(authed(set("Bedrock/claude-sonnet-4-5", 3.3), ADMIN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("names a provider"), "{}", err.message());

        let mut snapshot = watcher.next().await;
        while snapshot.version < 3 {
            snapshot = watcher.next().await;
        }
        assert_eq!(
            streamed(&snapshot, "claude-sonnet-4-5").unwrap().input_per_mtok,
            2.0
        );
        assert_eq!(
            streamed(&snapshot, "bedrock/claude-sonnet-4-5")
                .unwrap()
                .input_per_mtok,
            3.3
        );

        let listed = client
            .list_prices(authed(pb::ListPricesRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner()
            .prices;
        let source = |key: &str| listed.iter().find(|p| p.model == key).map(|p| p.source.clone());
        assert_eq!(source("claude-sonnet-4-5").as_deref(), Some("custom"));
        assert_eq!(source("bedrock/claude-sonnet-4-5").as_deref(), Some("custom"));
        assert_eq!(source("gpt-5").as_deref(), Some("default"));

        let remove = |model: &str| pb::RemovePriceRequest { model: model.into() };
        client
            .remove_price(authed(remove("claude-sonnet-4-5"), ADMIN))
            .await
            .unwrap();
        let snapshot = watcher.next().await;
        assert_eq!(streamed(&snapshot, "claude-sonnet-4-5"), Some(default));
        let err = client
            .remove_price(authed(remove("claude-sonnet-4-5"), ADMIN))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert!(
            err.message().contains("can be overridden") && err.message().contains("not removed"),
            "{}",
            err.message()
        );
        drop(watcher);
        stop(cp, shutdown).await;
    }
}
