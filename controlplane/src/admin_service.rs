//! `AdminService`: what the `drover` CLI calls.
//!
//! The guard in front (`auth::AdminGuard`) has authenticated the caller and checked its role
//! against `roles::RULES`; each handler here begins a [`Call`] with what the guard found, holds
//! a tenant-scoped caller to its tenant, and ends the call through [`Call::answer`], which
//! records a refusal (rate-limited per source) in the audit log. A change writes its audit
//! record through the audited store handle (`Store::audited`), in the change's transaction.
//!
//! Every request is validated by `drover_proto::model` before the store sees it; the store
//! does the cross-row checks in the transaction that writes. Mutations answer with the new
//! policy version. Reads are served from the latest published snapshot (the state the data
//! planes get), never with a credential; prices (which need their source) and usage are read
//! on the store thread.

use std::sync::Arc;

use drover_proto::model::{
    InvalidPolicy, MAX_PRICE_KEY_LEN, Module, Price, Provider, Route, quoted, validate_model_name,
    validate_name, validate_provider_name, validate_request_id, validate_tenant_name,
};
use drover_proto::pb;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::audit::TenantRef;
use crate::audit_api::{self, Caller, Refusals};
use crate::error::StoreError;
use crate::lease_service::{LeaseCounters, Leases};
use crate::limits_api;
use crate::policy_service::DataPlanes;
use crate::prices::PriceSource;
use crate::roles::{Role, TenantScope};
use crate::store::Store;
use crate::store::admins::NewAdmin;
use crate::store::idempotency::Idempotency;
use crate::store::usage::{GroupBy, UsageFilter, UsageTotals};
use crate::tenancy_api;

/// The `AdminService` implementation.
pub struct AdminApi {
    store: Store,
    dataplanes: Arc<DataPlanes>,
    /// For the lease traffic of each data plane in `Status`.
    leases: Arc<Leases>,
    refusals: Arc<Refusals>,
    /// Ends `FollowAudit` streams at shutdown.
    stop: CancellationToken,
}

impl AdminApi {
    pub fn new(
        store: Store,
        dataplanes: Arc<DataPlanes>,
        leases: Arc<Leases>,
        refusals: Arc<Refusals>,
        stop: CancellationToken,
    ) -> Self {
        AdminApi {
            store,
            dataplanes,
            leases,
            refusals,
            stop,
        }
    }

    /// Begins a call: who makes it (from the guard) and the draft of its audit record.
    fn begin<T: serde::Serialize>(
        &self,
        rpc: &'static str,
        request: Request<T>,
    ) -> Result<(Call<'_>, T), Status> {
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            // Only reachable if the service were mounted without its guard.
            return Err(Status::unauthenticated("missing or invalid admin token"));
        };
        let entry = crate::audit::Entry {
            budget: Some(self.refusals.budget()),
            ..caller.entry(rpc, request.get_ref())
        };
        Ok((
            Call {
                api: self,
                caller,
                entry,
            },
            request.into_inner(),
        ))
    }
}

/// One call in progress.
struct Call<'a> {
    api: &'a AdminApi,
    caller: Caller,
    entry: crate::audit::Entry,
}

impl Call<'_> {
    /// Names what the call acts on, and the tenant it concerns (kept as the caller's own for a
    /// tenant-scoped caller, which can only act on its own).
    fn target(&mut self, target: String, tenant: Option<TenantRef>) {
        self.entry.target = target;
        if self.caller.identity.tenant.is_none() {
            self.entry.tenant = tenant;
        }
    }

    /// The store, recording this call's change in the change's transaction.
    fn store(&self) -> Store {
        self.api.store.audited(self.entry.clone())
    }

    fn scope(&self) -> Option<&TenantScope> {
        self.caller.identity.tenant.as_ref()
    }

    fn outside(&self, what: String) -> StoreError {
        let scope = self.scope().map(|s| s.name.as_str()).unwrap_or_default();
        StoreError::Forbidden(format!(
            "{} is scoped to tenant {}; {what} is outside it",
            self.caller.identity.name,
            quoted(scope)
        ))
    }

    /// Refuses a scoped caller a tenant other than its own.
    fn tenant(&self, name: &str) -> Result<(), StoreError> {
        match self.scope() {
            Some(scope) if scope.name != name => Err(self.outside(format!("tenant {}", quoted(name)))),
            _ => Ok(()),
        }
    }

    /// A list's tenant filter: a scoped caller's own tenant when it gives none.
    fn tenant_filter(&self, requested: String) -> Result<String, StoreError> {
        match self.scope() {
            Some(scope) if requested.is_empty() => Ok(scope.name.clone()),
            _ => {
                self.tenant(&requested)?;
                Ok(requested)
            }
        }
    }

    /// Refuses a scoped caller a key of another tenant (or no key: the same answer, so a scoped
    /// caller cannot learn which key ids exist elsewhere).
    async fn key(&self, id: &str) -> Result<(), StoreError> {
        let Some(scope) = self.scope() else {
            return Ok(());
        };
        if self.api.store.key_tenant(id.to_owned()).await? != Some(scope.id) {
            return Err(self.outside(format!("key {}", quoted(id))));
        }
        Ok(())
    }

    async fn limit_scope(&self, scope: Option<&pb::LimitScope>) -> Result<(), StoreError> {
        match scope.and_then(|s| s.scope.as_ref()) {
            Some(pb::limit_scope::Scope::Tenant(name)) => self.tenant(name),
            Some(pb::limit_scope::Scope::KeyId(id)) => self.key(id).await,
            // Invalid; the handler says so.
            None => Ok(()),
        }
    }

    /// Ends the call: the answer, or the refusal as a status, recorded in the audit log.
    async fn answer<T>(self, result: Result<T, StoreError>) -> Result<Response<T>, Status> {
        match result {
            Ok(answer) => Ok(Response::new(answer)),
            Err(e) => {
                let status = Status::from(e);
                self.api
                    .refusals
                    .record(self.entry, &status, self.caller.source)
                    .await;
                Err(status)
            }
        }
    }
}

fn limit_target(scope: Option<&pb::LimitScope>) -> (String, Option<TenantRef>) {
    match scope.and_then(|s| s.scope.as_ref()) {
        Some(pb::limit_scope::Scope::Tenant(name)) => {
            (format!("tenant/{name}"), Some(TenantRef::Name(name.clone())))
        }
        Some(pb::limit_scope::Scope::KeyId(id)) => (format!("key/{id}"), Some(TenantRef::Key(id.clone()))),
        None => (String::new(), None),
    }
}

fn invalid(e: InvalidPolicy) -> StoreError {
    StoreError::Invalid(e)
}

/// Prefix of admin identity tokens, as of the bootstrap token.
const SHOWN_TOKEN_LEN: usize = "drv_admin_".len() + 6;

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn set_limit(
        &self,
        request: Request<pb::SetLimitRequest>,
    ) -> Result<Response<pb::LimitResponse>, Status> {
        let (mut call, r) = self.begin("SetLimit", request)?;
        let (target, tenant) = limit_target(r.scope.as_ref());
        call.target(target, tenant);
        let result = async {
            call.limit_scope(r.scope.as_ref()).await?;
            limits_api::set_limit(&call.store(), r).await
        }
        .await;
        call.answer(result).await
    }

    async fn list_limits(
        &self,
        request: Request<pb::ListLimitsRequest>,
    ) -> Result<Response<pb::ListLimitsResponse>, Status> {
        let (call, mut r) = self.begin("ListLimits", request)?;
        let result = async {
            r.tenant = call.tenant_filter(std::mem::take(&mut r.tenant))?;
            limits_api::list_limits(&self.store, r).await
        }
        .await;
        call.answer(result).await
    }

    async fn remove_limit(
        &self,
        request: Request<pb::RemoveLimitRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let (mut call, r) = self.begin("RemoveLimit", request)?;
        let (target, tenant) = limit_target(r.scope.as_ref());
        call.target(target, tenant);
        let result = async {
            call.limit_scope(r.scope.as_ref()).await?;
            limits_api::remove_limit(&call.store(), r).await
        }
        .await;
        call.answer(result).await
    }

    async fn set_cap(
        &self,
        request: Request<pb::SetCapRequest>,
    ) -> Result<Response<pb::CapResponse>, Status> {
        let (mut call, r) = self.begin("SetCap", request)?;
        let (target, tenant) = limit_target(r.scope.as_ref());
        call.target(target, tenant);
        let result = async {
            call.limit_scope(r.scope.as_ref()).await?;
            limits_api::set_cap(&call.store(), r).await
        }
        .await;
        call.answer(result).await
    }

    async fn list_caps(
        &self,
        request: Request<pb::ListCapsRequest>,
    ) -> Result<Response<pb::ListCapsResponse>, Status> {
        let (call, mut r) = self.begin("ListCaps", request)?;
        let result = async {
            r.tenant = call.tenant_filter(std::mem::take(&mut r.tenant))?;
            limits_api::list_caps(&self.store, r).await
        }
        .await;
        call.answer(result).await
    }

    async fn remove_cap(
        &self,
        request: Request<pb::RemoveCapRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let (mut call, r) = self.begin("RemoveCap", request)?;
        let (target, tenant) = limit_target(r.scope.as_ref());
        call.target(target, tenant);
        let result = async {
            call.limit_scope(r.scope.as_ref()).await?;
            limits_api::remove_cap(&call.store(), r).await
        }
        .await;
        call.answer(result).await
    }

    async fn add_provider(
        &self,
        request: Request<pb::AddProviderRequest>,
    ) -> Result<Response<pb::ProviderResponse>, Status> {
        let (mut call, request) = self.begin("AddProvider", request)?;
        call.target(format!("provider/{}", request.name), None);
        let result = async {
            let provider = Provider::try_from(&request).map_err(invalid)?;
            let info = pb::ProviderInfo::from(&provider);
            let version = call.store().add_provider(provider, request.replace).await?;
            tracing::info!(provider = %info.name, version, "provider saved");
            Ok(pb::ProviderResponse {
                provider: Some(info),
                version,
            })
        }
        .await;
        call.answer(result).await
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let (call, _) = self.begin("ListProviders", request)?;
        let snapshot = self.store.current();
        call.answer(Ok(pb::ListProvidersResponse {
            providers: snapshot.providers.iter().map(pb::ProviderInfo::from).collect(),
        }))
        .await
    }

    async fn remove_provider(
        &self,
        request: Request<pb::RemoveProviderRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let (mut call, r) = self.begin("RemoveProvider", request)?;
        let name = r.name;
        call.target(format!("provider/{name}"), None);
        let result = async {
            validate_provider_name(&name).map_err(invalid)?;
            let version = call.store().remove_provider(name.clone()).await?;
            tracing::info!(provider = %name, version, "provider removed");
            Ok(pb::ChangeResponse { version })
        }
        .await;
        call.answer(result).await
    }

    async fn set_route(
        &self,
        request: Request<pb::SetRouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let (mut call, r) = self.begin("SetRoute", request)?;
        let alias = r.route.as_ref().map(|w| w.alias.clone()).unwrap_or_default();
        call.target(format!("route/{alias}"), None);
        let result = async {
            let wire = r
                .route
                .ok_or_else(|| invalid(InvalidPolicy::new("route", "is required")))?;
            let route = Route::from_admin(&wire).map_err(invalid)?;
            let answer = pb::Route::from(&route);
            let version = call.store().set_route(route).await?;
            tracing::info!(alias = %answer.alias, version, "route saved");
            Ok(pb::RouteResponse {
                route: Some(answer),
                version,
            })
        }
        .await;
        call.answer(result).await
    }

    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let (call, _) = self.begin("ListRoutes", request)?;
        let snapshot = self.store.current();
        call.answer(Ok(pb::ListRoutesResponse {
            routes: snapshot.routes.iter().map(pb::Route::from).collect(),
        }))
        .await
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let (mut call, r) = self.begin("RemoveRoute", request)?;
        let alias = r.alias;
        call.target(format!("route/{alias}"), None);
        let result = async {
            validate_model_name("alias", &alias).map_err(invalid)?;
            let version = call.store().remove_route(alias.clone()).await?;
            tracing::info!(alias = %alias, version, "route removed");
            Ok(pb::ChangeResponse { version })
        }
        .await;
        call.answer(result).await
    }

    async fn set_price(
        &self,
        request: Request<pb::SetPriceRequest>,
    ) -> Result<Response<pb::PriceResponse>, Status> {
        let (mut call, r) = self.begin("SetPrice", request)?;
        let model = r.price.as_ref().map(|p| p.model.clone()).unwrap_or_default();
        call.target(format!("price/{model}"), None);
        let result = async {
            let wire = r
                .price
                .ok_or_else(|| invalid(InvalidPolicy::new("price", "is required")))?;
            let price = Price::try_from(&wire).map_err(invalid)?;
            let answer = pb::Price {
                source: PriceSource::Custom.as_str().to_owned(),
                ..pb::Price::from(&price)
            };
            let version = call.store().set_price(price).await?;
            tracing::info!(model = %answer.model, version, "price saved");
            Ok(pb::PriceResponse {
                price: Some(answer),
                version,
            })
        }
        .await;
        call.answer(result).await
    }

    async fn list_prices(
        &self,
        request: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::ListPricesResponse>, Status> {
        let (call, _) = self.begin("ListPrices", request)?;
        let result = async {
            let prices = self.store.list_prices().await?;
            Ok(pb::ListPricesResponse {
                prices: prices
                    .iter()
                    .map(|(price, source)| pb::Price {
                        source: source.as_str().to_owned(),
                        ..pb::Price::from(price)
                    })
                    .collect(),
            })
        }
        .await;
        call.answer(result).await
    }

    async fn remove_price(
        &self,
        request: Request<pb::RemovePriceRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let (mut call, r) = self.begin("RemovePrice", request)?;
        let model = r.model;
        call.target(format!("price/{model}"), None);
        let result = async {
            validate_name("model", &model, MAX_PRICE_KEY_LEN).map_err(invalid)?;
            let version = call.store().remove_price(model.clone()).await?;
            tracing::info!(model = %model, version, "price removed");
            Ok(pb::ChangeResponse { version })
        }
        .await;
        call.answer(result).await
    }

    async fn list_modules(
        &self,
        request: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        let (call, _) = self.begin("ListModules", request)?;
        call.answer(Ok(pb::ListModulesResponse {
            modules: self.store.current().modules.to_wire(),
        }))
        .await
    }

    async fn set_module(
        &self,
        request: Request<pb::SetModuleRequest>,
    ) -> Result<Response<pb::ModuleResponse>, Status> {
        let (mut call, request) = self.begin("SetModule", request)?;
        call.target(format!("module/{}", request.name), None);
        let result = async {
            let module = Module::parse(&request.name).map_err(invalid)?;
            if request.enabled && !module.is_available() {
                return Err(StoreError::FailedPrecondition(format!(
                    "module {} is not available in this version of Drover: its flag would be recorded and \
                     distributed but change nothing on the request path, so it cannot be enabled",
                    module.as_str()
                )));
            }
            let version = call.store().set_module(module, request.enabled).await?;
            tracing::info!(
                module = module.as_str(),
                enabled = request.enabled,
                version,
                "module set"
            );
            Ok(pb::ModuleResponse {
                module: Some(pb::Module {
                    name: module.as_str().to_owned(),
                    enabled: request.enabled,
                    available: module.is_available(),
                }),
                version,
            })
        }
        .await;
        call.answer(result).await
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        let (mut call, r) = self.begin("CreateTenant", request)?;
        call.target(
            format!("tenant/{}", r.name),
            Some(TenantRef::Name(r.name.clone())),
        );
        let result = tenancy_api::create_tenant(&call.store(), r, &call.caller.identity.name).await;
        call.answer(result).await
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        let (call, r) = self.begin("GetTenant", request)?;
        let result = async {
            call.tenant(&r.name)?;
            tenancy_api::get_tenant(&self.store, r).await
        }
        .await;
        call.answer(result).await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let (call, r) = self.begin("ListTenants", request)?;
        let result = async {
            if let Some(scope) = call.scope() {
                // Its own tenant only, if it is in the state asked for.
                let own = tenancy_api::get_tenant(
                    &self.store,
                    pb::GetTenantRequest {
                        name: scope.name.clone(),
                    },
                )
                .await?;
                let tenants = own
                    .tenant
                    .into_iter()
                    .filter(|t| r.state == 0 || t.state == r.state)
                    .collect();
                return Ok(pb::ListTenantsResponse {
                    tenants,
                    next_page_token: String::new(),
                });
            }
            tenancy_api::list_tenants(&self.store, r).await
        }
        .await;
        call.answer(result).await
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        let (mut call, r) = self.begin("UpdateTenant", request)?;
        call.target(
            format!("tenant/{}", r.name),
            Some(TenantRef::Name(r.name.clone())),
        );
        let result = tenancy_api::update_tenant(&call.store(), r).await;
        call.answer(result).await
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        let (mut call, r) = self.begin("DeleteTenant", request)?;
        call.target(
            format!("tenant/{}", r.name),
            Some(TenantRef::Name(r.name.clone())),
        );
        let result = tenancy_api::delete_tenant(&call.store(), r).await;
        call.answer(result).await
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::KeyWithSecretResponse>, Status> {
        let (mut call, r) = self.begin("CreateKey", request)?;
        let id = tenancy_api::new_key_id();
        call.target(format!("key/{id}"), Some(TenantRef::Name(r.tenant.clone())));
        // A retry answered from its first call creates no key: its record names the tenant.
        call.entry.unchanged_target = Some(format!("tenant/{}", r.tenant));
        let result = async {
            call.tenant(&r.tenant)?;
            tenancy_api::create_key(&call.store(), r, id, &call.caller.identity.name).await
        }
        .await;
        call.answer(result).await
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let (call, r) = self.begin("GetKey", request)?;
        let result = async {
            call.key(&r.id).await?;
            tenancy_api::get_key(&self.store, r).await
        }
        .await;
        call.answer(result).await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let (call, mut r) = self.begin("ListKeys", request)?;
        let result = async {
            r.tenant = call.tenant_filter(std::mem::take(&mut r.tenant))?;
            tenancy_api::list_keys(&self.store, r).await
        }
        .await;
        call.answer(result).await
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        let (mut call, r) = self.begin("RevokeKey", request)?;
        call.target(format!("key/{}", r.id), Some(TenantRef::Key(r.id.clone())));
        let result = async {
            call.key(&r.id).await?;
            tenancy_api::revoke_key(&call.store(), r).await
        }
        .await;
        call.answer(result).await
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyWithSecretResponse>, Status> {
        let (mut call, r) = self.begin("RotateKey", request)?;
        call.target(format!("key/{}", r.id), Some(TenantRef::Key(r.id.clone())));
        let result = async {
            call.key(&r.id).await?;
            tenancy_api::rotate_key(&call.store(), r, &call.caller.identity.name).await
        }
        .await;
        call.answer(result).await
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (call, _) = self.begin("Status", request)?;
        let snapshot = self.store.current();
        let mut dataplanes = self.dataplanes.list();
        let traffic: std::collections::HashMap<String, LeaseCounters> =
            self.leases.counters().await.into_iter().collect();
        for d in &mut dataplanes {
            d.leases = traffic.get(&d.id).map(|c| pb::LeaseTraffic {
                streams: c.streams,
                messages: c.messages,
                asks: c.asks,
                granted: c.granted,
                refused: c.refused,
                holdings: c.holdings,
            });
        }
        call.answer(Ok(pb::StatusResponse {
            version: snapshot.version,
            store_id: snapshot.store_id.clone(),
            dataplanes,
        }))
        .await
    }

    async fn query_usage(
        &self,
        request: Request<pb::UsageQuery>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let (call, mut r) = self.begin("QueryUsage", request)?;
        let result = async {
            r.tenant = call.tenant_filter(std::mem::take(&mut r.tenant))?;
            if !r.key_id.is_empty() {
                call.key(&r.key_id).await?;
            }
            if let Some(scope) = call.scope() {
                // Usage is kept by tenant name; an earlier, deleted tenant of the same name is
                // another tenant.
                r.since_unix_ms = r.since_unix_ms.max(scope.created_unix_ms);
                if r.until_unix_ms != 0 && r.until_unix_ms <= r.since_unix_ms {
                    let zero = usage_row("", &UsageTotals::default());
                    let grouped = r.group_by != pb::UsageGroupBy::Unspecified as i32;
                    return Ok(pb::UsageReport {
                        rows: if grouped { vec![] } else { vec![zero.clone()] },
                        total: Some(zero),
                    });
                }
            }
            let filter = usage_filter(&r).map_err(invalid)?;
            let grouped = filter.group_by != GroupBy::None;
            let groups = self.store.query_usage(filter).await?;
            let mut total = UsageTotals::default();
            for totals in groups.values() {
                total.add(totals)?;
            }
            let rows = if grouped {
                groups.iter().map(|(group, t)| usage_row(group, t)).collect()
            } else {
                vec![usage_row("", &total)]
            };
            Ok(pb::UsageReport {
                rows,
                total: Some(usage_row("", &total)),
            })
        }
        .await;
        call.answer(result).await
    }

    async fn create_admin(
        &self,
        request: Request<pb::CreateAdminRequest>,
    ) -> Result<Response<pb::AdminWithTokenResponse>, Status> {
        let (mut call, r) = self.begin("CreateAdmin", request)?;
        let tenant = (!r.tenant.is_empty()).then(|| TenantRef::Name(r.tenant.clone()));
        call.target(format!("admin/{}", r.name), tenant);
        let result = async {
            validate_tenant_name("name", &r.name)?;
            let role = Role::from_wire(r.role)
                .ok_or_else(|| InvalidPolicy::new("role", "must be one of viewer, operator and admin"))?;
            if !r.tenant.is_empty() {
                validate_tenant_name("tenant", &r.tenant)?;
            }
            validate_request_id("request_id", &r.request_id)?;
            // Bound to the caller: another admin repeating the request id gets ALREADY_EXISTS,
            // never the token.
            let idempotency = Idempotency::new(
                "CreateAdmin",
                &r.request_id,
                &[
                    r.name.as_bytes(),
                    role.as_str().as_bytes(),
                    r.tenant.as_bytes(),
                    call.caller.identity.name.as_bytes(),
                ],
            );
            let token = crate::auth::generate_admin_token();
            let new = NewAdmin {
                name: r.name.clone(),
                role,
                tenant: (!r.tenant.is_empty()).then(|| r.tenant.clone()),
                token_hash: Sha256::digest(token.as_bytes()).into(),
                token_prefix: token[..SHOWN_TOKEN_LEN].to_owned(),
                created_by: call.caller.identity.name.clone(),
            };
            let answer = call.store().create_admin(new, token, idempotency).await?;
            tracing::info!(admin = %r.name, role = %role, tenant = %r.tenant, "admin identity created");
            Ok(answer)
        }
        .await;
        call.answer(result).await
    }

    async fn list_admins(
        &self,
        request: Request<pb::ListAdminsRequest>,
    ) -> Result<Response<pb::ListAdminsResponse>, Status> {
        let (call, _) = self.begin("ListAdmins", request)?;
        let result = async {
            let root = pb::AdminInfo {
                name: crate::roles::ROOT.to_owned(),
                role: pb::AdminRole::Admin as i32,
                ..Default::default()
            };
            let mut admins = vec![root];
            admins.extend(self.store.list_admins().await?);
            Ok(pb::ListAdminsResponse { admins })
        }
        .await;
        call.answer(result).await
    }

    async fn revoke_admin(
        &self,
        request: Request<pb::RevokeAdminRequest>,
    ) -> Result<Response<pb::AdminResponse>, Status> {
        let (mut call, r) = self.begin("RevokeAdmin", request)?;
        call.target(format!("admin/{}", r.name), None);
        let result = async {
            validate_tenant_name("name", &r.name)?;
            let answer = call.store().revoke_admin(r.name.clone()).await?;
            tracing::info!(admin = %r.name, "admin identity revoked");
            Ok(answer)
        }
        .await;
        call.answer(result).await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let (call, r) = self.begin("ListAudit", request)?;
        let result = audit_api::list_audit(&self.store, &call.caller, r).await;
        call.answer(result).await
    }

    type FollowAuditStream = audit_api::FollowStream;

    async fn follow_audit(
        &self,
        request: Request<pb::FollowAuditRequest>,
    ) -> Result<Response<Self::FollowAuditStream>, Status> {
        let (call, r) = self.begin("FollowAudit", request)?;
        let result = audit_api::follow_audit(self.store.clone(), call.caller.clone(), r, self.stop.clone());
        call.answer(result).await
    }

    async fn verify_audit(
        &self,
        request: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let (call, r) = self.begin("VerifyAudit", request)?;
        let result = audit_api::verify_audit(&self.store, r).await;
        call.answer(result).await
    }
}

/// A usage query from the wire, checked.
fn usage_filter(q: &pb::UsageQuery) -> Result<UsageFilter, InvalidPolicy> {
    let group_by = match pb::UsageGroupBy::try_from(q.group_by) {
        Ok(pb::UsageGroupBy::Unspecified) => GroupBy::None,
        Ok(pb::UsageGroupBy::Model) => GroupBy::Model,
        Ok(pb::UsageGroupBy::Key) => GroupBy::Key,
        Ok(pb::UsageGroupBy::Day) => GroupBy::Day,
        Ok(pb::UsageGroupBy::Provider) => GroupBy::Provider,
        Ok(pb::UsageGroupBy::Tenant) => GroupBy::Tenant,
        Err(_) => {
            return Err(InvalidPolicy::new(
                "group_by",
                format!("unknown grouping {}", q.group_by),
            ));
        }
    };
    for (field, value) in [
        ("since_unix_ms", q.since_unix_ms),
        ("until_unix_ms", q.until_unix_ms),
    ] {
        if value < 0 {
            return Err(InvalidPolicy::new(field, "must not be negative"));
        }
    }
    if q.since_unix_ms != 0 && q.until_unix_ms != 0 && q.until_unix_ms <= q.since_unix_ms {
        return Err(InvalidPolicy::new(
            "until_unix_ms",
            "must be after since_unix_ms (the range is [since, until))",
        ));
    }
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let positive = |v: i64| (v != 0).then_some(v);
    Ok(UsageFilter {
        tenant: text(&q.tenant),
        key_id: text(&q.key_id),
        model: text(&q.model),
        since_unix_ms: positive(q.since_unix_ms),
        until_unix_ms: positive(q.until_unix_ms),
        group_by,
    })
}

fn usage_row(group: &str, t: &UsageTotals) -> pb::UsageRow {
    pb::UsageRow {
        group: group.to_owned(),
        requests: t.requests,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cached_input_tokens: t.cached_input_tokens,
        cost_nano_usd: t.cost_nano_usd,
        cache_hits: t.cache_hits,
        saved_nano_usd: t.saved_nano_usd,
        failed: t.failed,
        unpriced: t.unpriced,
    }
}
