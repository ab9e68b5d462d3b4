//! `AdminService`: what the `drover` CLI calls.
//!
//! Every request is validated by `drover_proto::model` before the store sees it; the store
//! does the cross-row checks in the transaction that writes. Mutations answer with the new
//! policy version. Reads are served from the latest published snapshot (the state the data
//! planes get), never with a credential. Authentication is `auth::TokenCheck`, in front.

use std::sync::Arc;

use drover_proto::model::{
    InvalidPolicy, Module, Price, Provider, Route, validate_model_name, validate_provider_name,
};
use drover_proto::pb;
use tonic::{Request, Response, Status};

use crate::error::StoreError;
use crate::policy_service::DataPlanes;
use crate::store::Store;

/// The `AdminService` implementation.
pub struct AdminApi {
    store: Store,
    dataplanes: Arc<DataPlanes>,
}

impl AdminApi {
    pub fn new(store: Store, dataplanes: Arc<DataPlanes>) -> Self {
        AdminApi { store, dataplanes }
    }
}

fn invalid(e: InvalidPolicy) -> StoreError {
    StoreError::Invalid(e)
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
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
        let route = Route::try_from(&wire).map_err(invalid)?;
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
        let answer = pb::Price::from(&price);
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
        let snapshot = self.store.current();
        Ok(Response::new(pb::ListPricesResponse {
            prices: snapshot.prices.iter().map(pb::Price::from).collect(),
        }))
    }

    async fn remove_price(
        &self,
        request: Request<pb::RemovePriceRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let model = request.into_inner().model;
        validate_model_name("model", &model).map_err(invalid)?;
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
            }),
            version,
        }))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let snapshot = self.store.current();
        Ok(Response::new(pb::StatusResponse {
            version: snapshot.version,
            store_id: snapshot.store_id.clone(),
            dataplanes: self.dataplanes.list(),
        }))
    }
}
