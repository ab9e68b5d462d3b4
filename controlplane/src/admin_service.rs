//! `AdminService`: what the `drover` CLI calls.
//!
//! Every request is validated by `drover_proto::model` before the store sees it; the store
//! does the cross-row checks in the transaction that writes. Mutations answer with the new
//! policy version. Reads are served from the latest published snapshot (the state the data
//! planes get), never with a credential; prices (which need their source) and usage are read
//! on the store thread. Authentication is `auth::TokenCheck`, in front.

use std::sync::Arc;

use drover_proto::model::{
    InvalidPolicy, MAX_PRICE_KEY_LEN, Module, Price, Provider, Route, validate_model_name, validate_name,
    validate_provider_name,
};
use drover_proto::pb;
use tonic::{Request, Response, Status};

use crate::error::StoreError;
use crate::lease_service::{LeaseCounters, Leases};
use crate::limits_api;
use crate::policy_service::DataPlanes;
use crate::prices::PriceSource;
use crate::store::Store;
use crate::store::usage::{GroupBy, UsageFilter, UsageTotals};
use crate::tenancy_api;

/// The `AdminService` implementation.
pub struct AdminApi {
    store: Store,
    dataplanes: Arc<DataPlanes>,
    /// For the lease traffic of each data plane in `Status`.
    leases: Arc<Leases>,
}

impl AdminApi {
    pub fn new(store: Store, dataplanes: Arc<DataPlanes>, leases: Arc<Leases>) -> Self {
        AdminApi {
            store,
            dataplanes,
            leases,
        }
    }
}

fn invalid(e: InvalidPolicy) -> StoreError {
    StoreError::Invalid(e)
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn set_limit(
        &self,
        request: Request<pb::SetLimitRequest>,
    ) -> Result<Response<pb::LimitResponse>, Status> {
        Ok(Response::new(
            limits_api::set_limit(&self.store, request.into_inner()).await?,
        ))
    }

    async fn list_limits(
        &self,
        request: Request<pb::ListLimitsRequest>,
    ) -> Result<Response<pb::ListLimitsResponse>, Status> {
        Ok(Response::new(
            limits_api::list_limits(&self.store, request.into_inner()).await?,
        ))
    }

    async fn remove_limit(
        &self,
        request: Request<pb::RemoveLimitRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        Ok(Response::new(
            limits_api::remove_limit(&self.store, request.into_inner()).await?,
        ))
    }

    async fn set_cap(
        &self,
        request: Request<pb::SetCapRequest>,
    ) -> Result<Response<pb::CapResponse>, Status> {
        Ok(Response::new(
            limits_api::set_cap(&self.store, request.into_inner()).await?,
        ))
    }

    async fn list_caps(
        &self,
        request: Request<pb::ListCapsRequest>,
    ) -> Result<Response<pb::ListCapsResponse>, Status> {
        Ok(Response::new(
            limits_api::list_caps(&self.store, request.into_inner()).await?,
        ))
    }

    async fn remove_cap(
        &self,
        request: Request<pb::RemoveCapRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        Ok(Response::new(
            limits_api::remove_cap(&self.store, request.into_inner()).await?,
        ))
    }

    async fn add_provider(
        &self,
        request: Request<pb::AddProviderRequest>,
    ) -> Result<Response<pb::ProviderResponse>, Status> {
        let request = request.into_inner();
        let provider = Provider::try_from(&request).map_err(invalid)?;
        let info = pb::ProviderInfo::from(&provider);
        let version = self.store.add_provider(provider, request.replace).await?;
        tracing::info!(provider = %info.name, version, "provider saved");
        Ok(Response::new(pb::ProviderResponse {
            provider: Some(info),
            version,
        }))
    }

    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let snapshot = self.store.current();
        Ok(Response::new(pb::ListProvidersResponse {
            providers: snapshot.providers.iter().map(pb::ProviderInfo::from).collect(),
        }))
    }

    async fn remove_provider(
        &self,
        request: Request<pb::RemoveProviderRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let name = request.into_inner().name;
        validate_provider_name(&name).map_err(invalid)?;
        let version = self.store.remove_provider(name.clone()).await?;
        tracing::info!(provider = %name, version, "provider removed");
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn set_route(
        &self,
        request: Request<pb::SetRouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let wire = request
            .into_inner()
            .route
            .ok_or_else(|| invalid(InvalidPolicy::new("route", "is required")))?;
        let route = Route::from_admin(&wire).map_err(invalid)?;
        let answer = pb::Route::from(&route);
        let version = self.store.set_route(route).await?;
        tracing::info!(alias = %answer.alias, version, "route saved");
        Ok(Response::new(pb::RouteResponse {
            route: Some(answer),
            version,
        }))
    }

    async fn list_routes(
        &self,
        _: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let snapshot = self.store.current();
        Ok(Response::new(pb::ListRoutesResponse {
            routes: snapshot.routes.iter().map(pb::Route::from).collect(),
        }))
    }

    async fn remove_route(
        &self,
        request: Request<pb::RemoveRouteRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let alias = request.into_inner().alias;
        validate_model_name("alias", &alias).map_err(invalid)?;
        let version = self.store.remove_route(alias.clone()).await?;
        tracing::info!(alias = %alias, version, "route removed");
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn set_price(
        &self,
        request: Request<pb::SetPriceRequest>,
    ) -> Result<Response<pb::PriceResponse>, Status> {
        let wire = request
            .into_inner()
            .price
            .ok_or_else(|| invalid(InvalidPolicy::new("price", "is required")))?;
        let price = Price::try_from(&wire).map_err(invalid)?;
        let answer = pb::Price {
            source: PriceSource::Custom.as_str().to_owned(),
            ..pb::Price::from(&price)
        };
        let version = self.store.set_price(price).await?;
        tracing::info!(model = %answer.model, version, "price saved");
        Ok(Response::new(pb::PriceResponse {
            price: Some(answer),
            version,
        }))
    }

    async fn list_prices(
        &self,
        _: Request<pb::ListPricesRequest>,
    ) -> Result<Response<pb::ListPricesResponse>, Status> {
        let prices = self.store.list_prices().await?;
        Ok(Response::new(pb::ListPricesResponse {
            prices: prices
                .iter()
                .map(|(price, source)| pb::Price {
                    source: source.as_str().to_owned(),
                    ..pb::Price::from(price)
                })
                .collect(),
        }))
    }

    async fn remove_price(
        &self,
        request: Request<pb::RemovePriceRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let model = request.into_inner().model;
        validate_name("model", &model, MAX_PRICE_KEY_LEN).map_err(invalid)?;
        let version = self.store.remove_price(model.clone()).await?;
        tracing::info!(model = %model, version, "price removed");
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn list_modules(
        &self,
        _: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        Ok(Response::new(pb::ListModulesResponse {
            modules: self.store.current().modules.to_wire(),
        }))
    }

    async fn set_module(
        &self,
        request: Request<pb::SetModuleRequest>,
    ) -> Result<Response<pb::ModuleResponse>, Status> {
        let request = request.into_inner();
        let module = Module::parse(&request.name).map_err(invalid)?;
        if request.enabled && !module.is_available() {
            return Err(StoreError::FailedPrecondition(format!(
                "module {} is not available in this version of Drover: its flag would be recorded and \
                 distributed but change nothing on the request path, so it cannot be enabled",
                module.as_str()
            ))
            .into());
        }
        let version = self.store.set_module(module, request.enabled).await?;
        tracing::info!(
            module = module.as_str(),
            enabled = request.enabled,
            version,
            "module set"
        );
        Ok(Response::new(pb::ModuleResponse {
            module: Some(pb::Module {
                name: module.as_str().to_owned(),
                enabled: request.enabled,
                available: module.is_available(),
            }),
            version,
        }))
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        Ok(Response::new(
            tenancy_api::create_tenant(&self.store, request.into_inner()).await?,
        ))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        Ok(Response::new(
            tenancy_api::get_tenant(&self.store, request.into_inner()).await?,
        ))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        Ok(Response::new(
            tenancy_api::list_tenants(&self.store, request.into_inner()).await?,
        ))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        Ok(Response::new(
            tenancy_api::update_tenant(&self.store, request.into_inner()).await?,
        ))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        Ok(Response::new(
            tenancy_api::delete_tenant(&self.store, request.into_inner()).await?,
        ))
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::KeyWithSecretResponse>, Status> {
        Ok(Response::new(
            tenancy_api::create_key(&self.store, request.into_inner()).await?,
        ))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        Ok(Response::new(
            tenancy_api::get_key(&self.store, request.into_inner()).await?,
        ))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        Ok(Response::new(
            tenancy_api::list_keys(&self.store, request.into_inner()).await?,
        ))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::KeyResponse>, Status> {
        Ok(Response::new(
            tenancy_api::revoke_key(&self.store, request.into_inner()).await?,
        ))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyWithSecretResponse>, Status> {
        Ok(Response::new(
            tenancy_api::rotate_key(&self.store, request.into_inner()).await?,
        ))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
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
        Ok(Response::new(pb::StatusResponse {
            version: snapshot.version,
            store_id: snapshot.store_id.clone(),
            dataplanes,
        }))
    }

    async fn query_usage(
        &self,
        request: Request<pb::UsageQuery>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let filter = usage_filter(&request.into_inner()).map_err(invalid)?;
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
        Ok(Response::new(pb::UsageReport {
            rows,
            total: Some(usage_row("", &total)),
        }))
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
