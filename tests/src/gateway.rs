//! Builders that start a real control plane and data planes on loopback for scenario tests:
//!
//! ```ignore
//! let up = MockProvider::openai().start().await;
//! let gw = Gateway::builder().start().await;
//! gw.provider("up", &up.base_url()).await;
//! gw.route("fast", &["up/gpt-4o-mini"]).await;
//! let resp = gw.chat("fast", "hello").await;
//! ```
//!
//! Everything binds 127.0.0.1:0. Each mutating admin call waits until every running data
//! plane serves the resulting version, so a test never races the policy stream. With
//! [`GatewayBuilder::tls`] the control plane serves gRPC over TLS only, and the data planes
//! and the admin client reach it at `https://localhost:PORT` with the trust given.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a setup that fails must fail the test that asked for it"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_controlplane::{Config as CpConfig, ControlPlane, DEFAULT_HANDSHAKE_TIMEOUT, GrpcTls};
use drover_dataplane::{Config as DpConfig, DataPlane};
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::tls::{Trust, client_endpoint};
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The admin token every test control plane uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Ok(v) = format!("Bearer {}", self.0).parse() {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects an admin client with `token`.
pub async fn admin_client(addr: SocketAddr, token: &str) -> Admin {
    try_admin_client(&format!("http://{addr}"), &Trust::WebPki, token)
        .await
        .expect("control plane reachable")
}

/// Connects an admin client to `url` (`https://` with `trust`), or says why it could not.
pub async fn try_admin_client(
    url: &str,
    trust: &Trust,
    token: &str,
) -> Result<Admin, tonic::transport::Error> {
    let endpoint = client_endpoint(Channel::from_shared(url.to_owned()).expect("valid url"), trust)?;
    let channel = endpoint.connect().await?;
    Ok(AdminServiceClient::with_interceptor(
        channel,
        Bearer(token.to_owned()),
    ))
}

/// The control plane's `Status`: its version and the data planes it knows.
pub async fn status(admin: &Admin) -> pb::StatusResponse {
    admin
        .clone()
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// The value of metric `name` (with its labels, e.g. `x_total{kind="a"}`) in `/metrics` text.
pub fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics:\n{metrics}"))
}

/// This process's resident memory, bytes (nextest runs each test in a process of its own).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// `provider/model` specs as route targets of weight 1.
pub fn targets(specs: &[&str]) -> Vec<pb::Target> {
    specs.iter().map(|t| weighted_target(t, 1)).collect()
}

fn weighted_target(spec: &str, weight: u32) -> pb::Target {
    let (provider, model) = spec.split_once('/').expect("provider/model");
    pb::Target {
        provider: provider.into(),
        model: model.into(),
        weight,
    }
}

/// TLS for a test control plane: the identity its gRPC listener serves, and what its
/// clients (data planes, admin) trust.
#[derive(Clone, Debug)]
pub struct TestTls {
    pub identity: GrpcTls,
    pub trust: Trust,
}

/// A control plane that can be killed and restarted on the same database and port.
pub struct TestControlPlane {
    cp: Option<ControlPlane>,
    shutdown: CancellationToken,
    db: PathBuf,
    addr: SocketAddr,
    tls: Option<TestTls>,
    leases: drover_controlplane::LeaseTiming,
}

/// The lease clock of a test control plane (see `docs/limits-and-caps.md`), milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    pub ttl_ms: u64,
    pub heartbeat_ms: u64,
    pub window_ms: u64,
}

impl LeaseTimes {
    fn timing(self) -> drover_controlplane::LeaseTiming {
        drover_controlplane::LeaseTiming::new(
            Duration::from_millis(self.ttl_ms),
            Duration::from_millis(self.heartbeat_ms),
            Duration::from_millis(self.window_ms),
        )
        .expect("valid lease times")
    }
}

impl TestControlPlane {
    pub async fn start(db: &Path) -> Self {
        Self::start_at(db, "127.0.0.1:0".parse().expect("addr"), None, Default::default()).await
    }

    /// Serving gRPC over TLS only.
    pub async fn start_tls(db: &Path, tls: TestTls) -> Self {
        Self::start_at(
            db,
            "127.0.0.1:0".parse().expect("addr"),
            Some(tls),
            Default::default(),
        )
        .await
    }

    /// With this lease clock instead of the defaults.
    pub async fn start_with_leases(db: &Path, times: LeaseTimes) -> Self {
        Self::start_at(db, "127.0.0.1:0".parse().expect("addr"), None, times.timing()).await
    }

    async fn start_at(
        db: &Path,
        addr: SocketAddr,
        tls: Option<TestTls>,
        leases: drover_controlplane::LeaseTiming,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let config = CpConfig {
            db_path: db.to_owned(),
            grpc_addr: addr,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            dataplane_token: Some("test-dataplane-token".to_owned()),
            master_key: None,
            usage_retention: None,
            audit_retention: None,
            tls: tls.as_ref().map(|t| t.identity.clone()),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            leases,
        };
        let mut last_err = None;
        // The port of a control plane just stopped can take a moment to be free again.
        for _ in 0..50 {
            match ControlPlane::start(config.clone(), shutdown.clone()).await {
                Ok(cp) => {
                    let addr = cp.grpc_addr();
                    return TestControlPlane {
                        cp: Some(cp),
                        shutdown,
                        db: db.to_owned(),
                        addr,
                        tls,
                        leases,
                    };
                }
                Err(e) => {
                    last_err = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("control plane did not start: {last_err:?}");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when it serves TLS.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// What its clients trust: the webpki roots for a plaintext control plane (unused).
    pub fn trust(&self) -> Trust {
        self.tls.as_ref().map(|t| t.trust.clone()).unwrap_or_default()
    }

    pub async fn admin(&self) -> Admin {
        try_admin_client(&self.url(), &self.trust(), ADMIN_TOKEN)
            .await
            .expect("control plane reachable")
    }

    /// Stops the control plane and waits until it is gone.
    pub async fn kill(&mut self) {
        self.shutdown.cancel();
        if let Some(cp) = self.cp.take() {
            tokio::time::timeout(Duration::from_secs(10), cp.wait())
                .await
                .expect("control plane stops promptly")
                .expect("control plane stops cleanly");
        }
    }

    /// Starts it again on the same database and port.
    pub async fn restart(&mut self) {
        assert!(self.cp.is_none(), "kill() first");
        *self = Self::start_at(&self.db.clone(), self.addr, self.tls.clone(), self.leases).await;
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A data plane running in this process.
pub struct TestDataPlane {
    dp: Option<DataPlane>,
    shutdown: CancellationToken,
    addr: SocketAddr,
}

impl TestDataPlane {
    pub async fn start(config: DpConfig) -> Self {
        let shutdown = CancellationToken::new();
        let dp = DataPlane::start(config, shutdown.clone())
            .await
            .expect("data plane starts");
        let addr = dp.http_addr();
        TestDataPlane {
            dp: Some(dp),
            shutdown,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn version(&self) -> Option<u64> {
        self.dp.as_ref().and_then(DataPlane::policy_version)
    }

    /// Waits until it serves `version` or newer.
    pub async fn wait_for_version(&self, version: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.version().is_none_or(|v| v < version) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "data plane still at {:?}, want {version}",
                self.version()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(dp) = self.dp.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), dp.wait()).await;
        }
    }
}

impl Drop for TestDataPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Test defaults for a data plane: short timeouts so failure tests finish quickly.
pub fn dataplane_config(control_plane: &str) -> DpConfig {
    let env: drover_dataplane::EnvLookup =
        Arc::new(|var: &str| (var == "TEST_PROVIDER_API_KEY").then(|| "sk-test-provider-key".to_owned()));
    let mut c = DpConfig::new("127.0.0.1:0".parse().expect("addr"), control_plane, env);
    c.token = Some(drover_proto::model::Secret::new("test-dataplane-token"));
    c.proxy.upstream_timeout = Duration::from_secs(5);
    c.proxy.request_timeout = Duration::from_secs(20);
    c.proxy.backoff_base = Duration::from_millis(5);
    c.proxy.backoff_max = Duration::from_millis(20);
    c
}

pub struct GatewayBuilder {
    dataplanes: usize,
    tweak: Box<dyn Fn(&mut DpConfig) + Send>,
    tls: Option<TestTls>,
    leases: Option<LeaseTimes>,
}

impl GatewayBuilder {
    /// The control plane serves gRPC over TLS only; data planes trust `tls.trust`.
    pub fn tls(mut self, tls: TestTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn dataplanes(mut self, n: usize) -> Self {
        self.dataplanes = n;
        self
    }

    /// The control plane's lease clock (time to live, heartbeat, rate window).
    pub fn lease_times(mut self, times: LeaseTimes) -> Self {
        self.leases = Some(times);
        self
    }

    /// Adjusts every data plane's configuration.
    pub fn configure(mut self, f: impl Fn(&mut DpConfig) + Send + 'static) -> Self {
        self.tweak = Box::new(f);
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("drover.db");
        let cp = match (self.tls, self.leases) {
            (Some(tls), _) => TestControlPlane::start_tls(&db, tls).await,
            (None, Some(times)) => TestControlPlane::start_with_leases(&db, times).await,
            (None, None) => TestControlPlane::start(&db).await,
        };
        let mut dps = Vec::new();
        for i in 0..self.dataplanes {
            let mut config = dataplane_config(&cp.url());
            config.control_plane_trust = cp.trust();
            config.dataplane_id = format!("dp-{i}");
            (self.tweak)(&mut config);
            dps.push(TestDataPlane::start(config).await);
        }
        let admin = cp.admin().await;
        let http = reqwest_like_client();
        let gw = Gateway {
            dir: Arc::new(dir),
            cp,
            dps,
            admin,
            http,
        };
        // The first snapshot (version 1, empty) makes every data plane ready.
        let v = gw.version().await;
        gw.wait_all(v).await;
        gw
    }
}

fn reqwest_like_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>()
}

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// Whose limit or cap: a tenant by name, or a key by id.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Tenant(&'a str),
    Key(&'a str),
}

impl Scope<'_> {
    pub fn wire(self) -> pb::LimitScope {
        pb::LimitScope {
            scope: Some(match self {
                Scope::Tenant(t) => pb::limit_scope::Scope::Tenant(t.to_owned()),
                Scope::Key(k) => pb::limit_scope::Scope::KeyId(k.to_owned()),
            }),
        }
    }
}

/// An HTTP client of the gateway that a task can own.
#[derive(Clone)]
pub struct Caller {
    http: HttpClient,
}

impl Caller {
    /// Sends a request and reads the whole response.
    pub async fn send_to(
        &self,
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> Reply {
        use http_body_util::BodyExt;
        let resp = self.open(base, method, path, headers, body).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a (streaming) request, reads the first piece of its body and goes away: a
    /// caller that cuts a stream. Returns the status.
    pub async fn stream_and_cut(
        &self,
        base: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> http::StatusCode {
        use http_body_util::BodyExt;
        let resp = self.open(base, "POST", path, headers, body).await;
        let status = resp.status();
        let mut body = resp.into_body();
        let _ = body.frame().await;
        status
    }

    async fn open(
        &self,
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body.into()))
            .expect("request");
        self.http.request(req).await.expect("gateway answers")
    }
}

/// A control plane, its data planes and an admin client.
pub struct Gateway {
    pub dir: Arc<tempfile::TempDir>,
    pub cp: TestControlPlane,
    pub dps: Vec<TestDataPlane>,
    pub admin: Admin,
    pub http: HttpClient,
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            })
            .map(str::to_owned)
            .collect()
    }

    /// `(event name, data)` of each SSE event, for formats that name their events.
    pub fn named_events(&self) -> Vec<(String, serde_json::Value)> {
        self.text()
            .split("\n\n")
            .filter_map(|e| {
                let name = e.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
                Some((
                    name.to_owned(),
                    serde_json::from_str(data).unwrap_or(serde_json::Value::Null),
                ))
            })
            .collect()
    }
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            dataplanes: 1,
            tweak: Box::new(|_| {}),
            tls: None,
            leases: None,
        }
    }

    /// Base URL of the first data plane.
    pub fn url(&self) -> String {
        self.dps[0].url()
    }

    /// The control plane's `Status`.
    pub async fn status(&self) -> pb::StatusResponse {
        status(&self.admin).await
    }

    pub async fn version(&self) -> u64 {
        self.status().await.version
    }

    /// Waits until every running data plane serves `version` or newer.
    pub async fn wait_all(&self, version: u64) {
        for dp in &self.dps {
            if dp.dp.is_some() {
                dp.wait_for_version(version).await;
            }
        }
    }

    /// Adds (or replaces) a provider whose credential is env `env`, without waiting for the
    /// data planes: the admin API's answer, refusals included.
    pub async fn try_provider(
        &self,
        name: &str,
        kind: pb::ProviderKind,
        base_url: &str,
        env: &str,
    ) -> Result<u64, tonic::Status> {
        self.try_provider_responses(name, kind, base_url, env, pb::ResponsesApi::Unspecified)
            .await
    }

    /// [`Gateway::try_provider`] with how it gets Responses API calls.
    pub async fn try_provider_responses(
        &self,
        name: &str,
        kind: pb::ProviderKind,
        base_url: &str,
        env: &str,
        responses_api: pb::ResponsesApi,
    ) -> Result<u64, tonic::Status> {
        self.admin
            .clone()
            .add_provider(pb::AddProviderRequest {
                name: name.into(),
                kind: kind as i32,
                base_url: base_url.into(),
                credential: Some(pb::add_provider_request::Credential::ApiKeyEnv(env.into())),
                replace: true,
                api_version: String::new(),
                responses_api: responses_api as i32,
            })
            .await
            .map(|r| r.into_inner().version)
    }

    /// Adds a provider of any kind that gets Responses API calls as `responses_api` says.
    pub async fn provider_responses(
        &self,
        name: &str,
        kind: pb::ProviderKind,
        base_url: &str,
        responses_api: pb::ResponsesApi,
    ) -> u64 {
        let v = self
            .try_provider_responses(name, kind, base_url, "TEST_PROVIDER_API_KEY", responses_api)
            .await
            .expect("add provider");
        self.wait_all(v).await;
        v
    }

    /// Adds an OpenAI-compatible provider (credential: env `TEST_PROVIDER_API_KEY`).
    pub async fn provider(&self, name: &str, base_url: &str) -> u64 {
        self.provider_kind(name, pb::ProviderKind::OpenaiCompatible, base_url)
            .await
    }

    /// Adds a provider of any kind (credential: env `TEST_PROVIDER_API_KEY`).
    pub async fn provider_kind(&self, name: &str, kind: pb::ProviderKind, base_url: &str) -> u64 {
        let v = self
            .try_provider(name, kind, base_url, "TEST_PROVIDER_API_KEY")
            .await
            .expect("add provider");
        self.wait_all(v).await;
        v
    }

    /// Sets a fallback route.
    pub async fn route(&self, alias: &str, targets: &[&str]) -> u64 {
        self.set_route(route(alias, targets)).await
    }

    pub async fn route_with(&self, alias: &str, strategy: pb::RouteStrategy, targets: &[(&str, u32)]) -> u64 {
        self.set_route(pb::Route {
            strategy: strategy as i32,
            targets: targets
                .iter()
                .map(|(t, weight)| weighted_target(t, *weight))
                .collect(),
            ..route(alias, &[])
        })
        .await
    }

    /// Sets a fallback route whose answers are cached for `ttl_secs`.
    pub async fn route_cached(&self, alias: &str, targets: &[&str], ttl_secs: u32) -> u64 {
        self.set_route(pb::Route {
            cache_ttl_secs: ttl_secs,
            ..route(alias, targets)
        })
        .await
    }

    /// Sets any route, as given, and waits until every data plane serves it.
    pub async fn set_route(&self, route: pb::Route) -> u64 {
        let v = self
            .admin
            .clone()
            .set_route(pb::SetRouteRequest { route: Some(route) })
            .await
            .expect("set route")
            .into_inner()
            .version;
        self.wait_all(v).await;
        v
    }

    /// Sets a fallback route that also retries attempts that broke after the request was sent.
    pub async fn route_retrying_after_send(&self, alias: &str, targets: &[&str]) -> u64 {
        self.set_route(pb::Route {
            retry_after_send: true,
            ..route(alias, targets)
        })
        .await
    }

    /// Removes a route and waits until every data plane serves the change.
    pub async fn remove_route(&self, alias: &str) -> u64 {
        let v = self
            .admin
            .clone()
            .remove_route(pb::RemoveRouteRequest { alias: alias.into() })
            .await
            .expect("remove route")
            .into_inner()
            .version;
        self.wait_all(v).await;
        v
    }

    /// Creates tenant `name`; returns the policy version.
    pub async fn tenant(&self, name: &str) -> u64 {
        self.admin
            .clone()
            .create_tenant(pb::CreateTenantRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("create tenant")
            .into_inner()
            .version
    }

    /// Suspends or resumes tenant `name`, without waiting for the data planes; returns the
    /// policy version.
    pub async fn tenant_state(&self, name: &str, state: pb::TenantState) -> u64 {
        self.admin
            .clone()
            .update_tenant(pb::UpdateTenantRequest {
                name: name.into(),
                state: state as i32,
                ..Default::default()
            })
            .await
            .expect("update tenant")
            .into_inner()
            .version
    }

    /// Creates a key of `tenant` limited to `models` (empty: any) and waits until every data
    /// plane has it; returns the key's answer (id, secret, version).
    pub async fn key(&self, tenant: &str, models: &[&str]) -> pb::KeyWithSecretResponse {
        let key = self
            .admin
            .clone()
            .create_key(pb::CreateKeyRequest {
                tenant: tenant.into(),
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner();
        self.wait_all(key.version).await;
        key
    }

    /// Switches a module on or off and waits until every data plane serves the change.
    pub async fn module(&self, name: &str, enabled: bool) -> u64 {
        let v = self
            .admin
            .clone()
            .set_module(pb::SetModuleRequest {
                name: name.into(),
                enabled,
            })
            .await
            .expect("set module")
            .into_inner()
            .version;
        self.wait_all(v).await;
        v
    }

    /// The ledger's total over all usage.
    pub async fn usage_total(&self) -> pb::UsageRow {
        self.admin
            .clone()
            .query_usage(pb::UsageQuery::default())
            .await
            .expect("query usage")
            .into_inner()
            .total
            .unwrap_or_default()
    }

    /// Waits until the ledger holds at least `requests` requests, and returns its total.
    pub async fn wait_for_usage(&self, requests: u64) -> pb::UsageRow {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let t = self.usage_total().await;
            if t.requests >= requests {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ledger has {} of {requests} requests",
                t.requests
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/metrics` of the first data plane.
    pub async fn metrics(&self) -> String {
        self.metrics_at(&self.url()).await
    }

    /// `/metrics` of the data plane at `base`.
    pub async fn metrics_at(&self, base: &str) -> String {
        self.send_to(base, "GET", "/metrics", &[], "").await.text()
    }

    /// The value of metric `name` on the first data plane (see [`metric`]).
    pub async fn metric(&self, name: &str) -> u64 {
        metric(&self.metrics().await, name)
    }

    /// Sends a request to the first data plane and reads the whole answer.
    pub async fn send(&self, method: &str, path: &str, body: impl Into<bytes::Bytes>) -> Reply {
        self.send_to(&self.url(), method, path, &[], body).await
    }

    pub async fn send_to(
        &self,
        base: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> Reply {
        self.clone_client()
            .send_to(base, method, path, headers, body)
            .await
    }

    /// An HTTP client of the gateway that tasks can own.
    pub fn clone_client(&self) -> Caller {
        Caller {
            http: self.http.clone(),
        }
    }

    /// Creates tenant `name` failing closed (`true`) or open when the control plane is away;
    /// returns the policy version.
    pub async fn tenant_on_cp_loss(&self, name: &str, closed: bool) -> u64 {
        let on_cp_loss = if closed {
            pb::OnCpLoss::Closed
        } else {
            pb::OnCpLoss::Open
        };
        self.admin
            .clone()
            .create_tenant(pb::CreateTenantRequest {
                name: name.into(),
                on_cp_loss: on_cp_loss.into(),
                ..Default::default()
            })
            .await
            .expect("create tenant")
            .into_inner()
            .version
    }

    /// Sets the given rate limits of `scope`; returns the policy version.
    pub async fn limit(
        &self,
        scope: Scope<'_>,
        rpm: Option<u64>,
        tpm: Option<u64>,
        concurrency: Option<u32>,
    ) -> u64 {
        self.admin
            .clone()
            .set_limit(pb::SetLimitRequest {
                scope: Some(scope.wire()),
                rpm,
                tpm,
                concurrency,
            })
            .await
            .expect("set limit")
            .into_inner()
            .version
    }

    /// Sets a hard spend cap of `scope`, nano-USD; returns the policy version.
    pub async fn cap(&self, scope: Scope<'_>, limit_nano_usd: i64, period: pb::CapPeriod) -> u64 {
        self.admin
            .clone()
            .set_cap(pb::SetCapRequest {
                scope: Some(scope.wire()),
                period: period.into(),
                limit_nano_usd,
                ..Default::default()
            })
            .await
            .expect("set cap")
            .into_inner()
            .version
    }

    /// Prices `model`, USD per million input and output tokens; returns the policy version.
    pub async fn price(&self, model: &str, input: f64, output: f64) -> u64 {
        self.admin
            .clone()
            .set_price(pb::SetPriceRequest {
                price: Some(pb::Price {
                    model: model.into(),
                    input_per_mtok: input,
                    output_per_mtok: output,
                    ..Default::default()
                }),
            })
            .await
            .expect("set price")
            .into_inner()
            .version
    }

    /// `POST /v1/chat/completions` with one user message.
    pub async fn chat(&self, model: &str, content: &str) -> Reply {
        self.send("POST", "/v1/chat/completions", chat_body(model, content, false))
            .await
    }

    /// `POST /v1/messages` (Anthropic format) with one user message.
    pub async fn message(&self, model: &str, content: &str, stream: bool) -> Reply {
        let body = serde_json::json!({
            "model": model,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": content}],
            "stream": stream,
        });
        self.send_to(
            &self.url(),
            "POST",
            "/v1/messages",
            &[("anthropic-version", "2023-06-01")],
            body.to_string(),
        )
        .await
    }

    /// Streaming `POST /v1/chat/completions` with one user message.
    pub async fn chat_stream(&self, model: &str, content: &str) -> Reply {
        self.send("POST", "/v1/chat/completions", chat_body(model, content, true))
            .await
    }
}

/// A fallback route to `targets` (`provider/model`), not cached, not retried after sending.
pub fn route(alias: &str, targets: &[&str]) -> pb::Route {
    pb::Route {
        alias: alias.into(),
        strategy: pb::RouteStrategy::Fallback as i32,
        targets: self::targets(targets),
        cache_ttl_secs: 0,
        retry_after_send: false,
    }
}

/// A chat request body.
pub fn chat_body(model: &str, content: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    })
    .to_string()
}
