//! Wiring: from a `Config` to a running control plane, and back down.
//!
//! `ControlPlane::start` resolves the secrets beside the database, opens the store, starts the
//! lease book (`lease_service::Leases`: its recovery time starts then), binds the gRPC
//! listener (plaintext or TLS, each connection under a handshake deadline: `listener`) and
//! spawns one tonic server carrying AdminService, PolicyService, UsageService, LeaseService,
//! reflection and health, the usage retention task and the lease book's task (limits after
//! every policy change, ledger events, garbage). Cancelling the shutdown
//! token stops accepting, ends every policy stream and lets in-flight calls finish; `wait`
//! returns once the server has stopped and the database is closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::Secret;
use drover_proto::pb;
use drover_proto::pb::admin_service_server::AdminServiceServer;
use drover_proto::pb::lease_service_server::LeaseServiceServer;
use drover_proto::pb::policy_service_server::PolicyServiceServer;
use drover_proto::pb::usage_service_server::{UsageService, UsageServiceServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};

use crate::admin_service::AdminApi;
use crate::audit_api::Refusals;
use crate::auth::{self, AdminGuard, AdminToken, TokenCheck};
use crate::config::{Config, master_key_file_for};
use crate::error::{StartError, StopError};
use crate::lease_service::{LeaseApi, LeaseCounters, Leases};
use crate::listener::Incoming;
use crate::policy_service::{DataPlanes, PolicyApi};
use crate::secret_file;
use crate::store::crypto::MasterKey;
use crate::store::{Store, StoreThread};
use crate::usage_service::{UsageApi, run_retention};
use drover_proto::limits::{
    MAX_LEASE_MESSAGE_BYTES, MAX_POLICY_MESSAGE_BYTES, MAX_REQUEST_BYTES, MAX_USAGE_MESSAGE_BYTES,
};

/// HTTP/2 pings on idle connections, so a vanished data plane is noticed.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive probes on idle connections, below HTTP/2 (e.g. through a NAT).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Most concurrent calls (HTTP/2 streams) on one connection. A data plane uses one for its
/// policy stream, one for its lease stream and one at a time for usage reports; the CLI one
/// per command.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long, after shutdown, open connections may take to finish their calls before the
/// server stops waiting for them (e.g. a client watching health forever).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running control plane.
pub struct ControlPlane {
    grpc_addr: SocketAddr,
    admin_token: Secret,
    created_token_file: Option<PathBuf>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    retention: JoinHandle<()>,
    lease_task: JoinHandle<()>,
    leases: Arc<Leases>,
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
        let leases = match Leases::start(store.clone(), config.leases).await {
            Ok(leases) => leases,
            Err(source) => {
                if let Err(close) = store_thread.close().await {
                    tracing::warn!(error = %close, "closing the store after a failed start");
                }
                return Err(StartError::Store {
                    path: config.db_path.clone(),
                    source,
                });
            }
        };
        let listening = listen(
            &config,
            &store,
            &leases,
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
            config.audit_retention.filter(|d| !d.is_zero()),
            stop.clone(),
        ));
        let lease_task = tokio::spawn(leases.clone().run(stop.clone()));
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
            lease_task,
            leases,
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

    /// What each data plane's lease streams carried so far (messages, asks, holdings, grants),
    /// by data plane id: for benchmarks and diagnostics.
    pub async fn lease_counters(&self) -> Vec<(String, LeaseCounters)> {
        self.leases.counters().await
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
        // It ends with `stop`.
        let _ = self.lease_task.await;
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
    leases: &Arc<Leases>,
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
    let router = router(store, leases, admin_token, dataplane_token.as_ref(), stop).await?;
    let server = tokio::spawn(serve(router, incoming, stop.clone()));
    Ok((grpc_addr, server))
}

async fn router(
    store: &Store,
    leases: &Arc<Leases>,
    admin_token: &Secret,
    dataplane_token: Option<&Secret>,
    stop: &CancellationToken,
) -> Result<Router, StartError> {
    let dataplanes = Arc::new(DataPlanes::default());
    let refusals = Arc::new(Refusals::new(store.clone()));
    let admin = AdminServiceServer::new(AdminApi::new(
        store.clone(),
        dataplanes.clone(),
        leases.clone(),
        refusals.clone(),
        stop.clone(),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    let admin = AdminGuard::new(admin, admin_token.clone(), store.identities(), refusals);
    let policy = PolicyServiceServer::new(PolicyApi::new(store.clone(), dataplanes, stop.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    let usage = UsageServiceServer::new(UsageApi::new(store.clone()))
        .max_decoding_message_size(MAX_USAGE_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_USAGE_MESSAGE_BYTES);
    let lease = LeaseServiceServer::new(LeaseApi::new(leases.clone(), stop.clone()))
        .max_decoding_message_size(MAX_LEASE_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_LEASE_MESSAGE_BYTES);

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
    health_reporter
        .set_serving::<LeaseServiceServer<LeaseApi>>()
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
        .add_service(admin)
        .add_service(InterceptedService::new(
            policy,
            TokenCheck::dataplane(admin_token, dataplane_token),
        ))
        .add_service(InterceptedService::new(
            usage,
            TokenCheck::dataplane(admin_token, dataplane_token),
        ))
        .add_service(InterceptedService::new(
            lease,
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
