//! The rate-limit and spend-cap RPCs of `AdminService`: validation with the rules of
//! `drover_proto::model`, and the calls into the store. `admin_service` delegates here.
//!
//! Whether a tenant or key exists is the store's to say (NOT_FOUND, a revoked key and a deleted
//! tenant included); everything else is refused here, with a field violation naming the field,
//! before the store is asked. A call that changes nothing keeps the policy version.

use drover_proto::model::{
    Cap, CapPeriod, InvalidPolicy, Limits, validate_cap_amount, validate_concurrency_limit, validate_key_id,
    validate_rate_limit, validate_soft_at, validate_tenant_name,
};
use drover_proto::pb;

use crate::error::StoreError;
use crate::store::Store;
use crate::store::limits::{LimitKinds, Scope};
use crate::store::page::Page;

/// The tenant or key a request names.
fn scope(scope: Option<&pb::LimitScope>) -> Result<Scope, InvalidPolicy> {
    match scope.and_then(|s| s.scope.as_ref()) {
        Some(pb::limit_scope::Scope::Tenant(name)) => {
            validate_tenant_name("scope.tenant", name)?;
            Ok(Scope::Tenant(name.clone()))
        }
        Some(pb::limit_scope::Scope::KeyId(id)) => {
            validate_key_id("scope.key_id", id)?;
            Ok(Scope::Key(id.clone()))
        }
        None => Err(InvalidPolicy::new(
            "scope",
            "is required: a tenant (by name) or a key (by key_id)",
        )),
    }
}

/// A list's tenant filter: empty is none.
fn tenant_filter(tenant: &str) -> Result<Option<String>, InvalidPolicy> {
    if tenant.is_empty() {
        return Ok(None);
    }
    validate_tenant_name("tenant", tenant)?;
    Ok(Some(tenant.to_owned()))
}

/// The limits a `SetLimit` sets, checked: at least one, each within its bounds.
fn limits_to_set(r: &pb::SetLimitRequest) -> Result<Limits, InvalidPolicy> {
    if r.rpm.is_none() && r.tpm.is_none() && r.concurrency.is_none() {
        return Err(InvalidPolicy::new(
            "rpm",
            "no limit given: set at least one of rpm, tpm and concurrency",
        ));
    }
    Ok(Limits {
        rpm: r.rpm.map(|v| validate_rate_limit("rpm", v)).transpose()?,
        tpm: r.tpm.map(|v| validate_rate_limit("tpm", v)).transpose()?,
        concurrency: r
            .concurrency
            .map(|v| validate_concurrency_limit("concurrency", v))
            .transpose()?,
    })
}

pub async fn set_limit(store: &Store, r: pb::SetLimitRequest) -> Result<pb::LimitResponse, StoreError> {
    let scope = scope(r.scope.as_ref())?;
    let set = limits_to_set(&r)?;
    let answer = store.set_limits(scope.clone(), set).await?;
    tracing::info!(scope = ?scope, ?set, version = answer.version, "limits set");
    Ok(answer)
}

pub async fn list_limits(
    store: &Store,
    r: pb::ListLimitsRequest,
) -> Result<pb::ListLimitsResponse, StoreError> {
    let tenant = tenant_filter(&r.tenant)?;
    let page = Page::from_wire(r.page_size, &r.page_token, format!("limits tenant={}", r.tenant))?;
    let (limits, next) = store.list_limits(tenant, page).await?;
    Ok(pb::ListLimitsResponse {
        limits,
        next_page_token: next.map(|t| t.into_wire()).unwrap_or_default(),
    })
}

pub async fn remove_limit(
    store: &Store,
    r: pb::RemoveLimitRequest,
) -> Result<pb::ChangeResponse, StoreError> {
    let scope = scope(r.scope.as_ref())?;
    let kinds = LimitKinds {
        rpm: r.rpm,
        tpm: r.tpm,
        concurrency: r.concurrency,
    };
    let kinds = if kinds == LimitKinds::default() {
        LimitKinds::ALL
    } else {
        kinds
    };
    let version = store.remove_limits(scope.clone(), kinds).await?;
    tracing::info!(scope = ?scope, ?kinds, version, "limits removed");
    Ok(pb::ChangeResponse { version })
}

/// The cap a `SetCap` sets, checked.
fn cap_to_set(r: &pb::SetCapRequest) -> Result<Cap, InvalidPolicy> {
    let period = CapPeriod::try_from(r.period)?;
    validate_cap_amount("limit_nano_usd", r.limit_nano_usd)?;
    Ok(Cap {
        period,
        limit_nano_usd: r.limit_nano_usd,
        soft_at: validate_soft_at("soft_at", r.soft_at)?,
        allow_unpriced: r.allow_unpriced,
    })
}

pub async fn set_cap(store: &Store, r: pb::SetCapRequest) -> Result<pb::CapResponse, StoreError> {
    let scope = scope(r.scope.as_ref())?;
    let cap = cap_to_set(&r)?;
    let answer = store.set_cap(scope.clone(), cap).await?;
    tracing::info!(scope = ?scope, ?cap, version = answer.version, "cap set");
    Ok(answer)
}

pub async fn list_caps(store: &Store, r: pb::ListCapsRequest) -> Result<pb::ListCapsResponse, StoreError> {
    let tenant = tenant_filter(&r.tenant)?;
    let page = Page::from_wire(r.page_size, &r.page_token, format!("caps tenant={}", r.tenant))?;
    let (caps, next) = store.list_caps(tenant, page).await?;
    Ok(pb::ListCapsResponse {
        caps,
        next_page_token: next.map(|t| t.into_wire()).unwrap_or_default(),
    })
}

pub async fn remove_cap(store: &Store, r: pb::RemoveCapRequest) -> Result<pb::ChangeResponse, StoreError> {
    let scope = scope(r.scope.as_ref())?;
    let period = match r.period {
        0 => None,
        p => Some(CapPeriod::try_from(p)?),
    };
    let version = store.remove_caps(scope.clone(), period).await?;
    tracing::info!(scope = ?scope, ?period, version, "caps removed");
    Ok(pb::ChangeResponse { version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Option<pb::LimitScope> {
        Some(pb::LimitScope {
            scope: Some(pb::limit_scope::Scope::Tenant(name.into())),
        })
    }

    #[test]
    fn scopes_and_limits_are_checked_field_by_field() {
        assert_eq!(scope(None).unwrap_err().field, "scope");
        assert_eq!(
            scope(Some(&pb::LimitScope { scope: None })).unwrap_err().field,
            "scope"
        );
        assert_eq!(scope(tenant("Acme").as_ref()).unwrap_err().field, "scope.tenant");
        let key = pb::LimitScope {
            scope: Some(pb::limit_scope::Scope::KeyId("sk-1".into())),
        };
        assert_eq!(scope(Some(&key)).unwrap_err().field, "scope.key_id");
        assert_eq!(
            scope(tenant("acme").as_ref()).unwrap(),
            Scope::Tenant("acme".into())
        );

        let none = pb::SetLimitRequest {
            scope: tenant("acme"),
            ..Default::default()
        };
        assert_eq!(limits_to_set(&none).unwrap_err().field, "rpm");
        for (request, field) in [
            (
                pb::SetLimitRequest {
                    tpm: Some(0),
                    ..none.clone()
                },
                "tpm",
            ),
            (
                pb::SetLimitRequest {
                    rpm: Some(drover_proto::model::MAX_RATE_LIMIT + 1),
                    ..none.clone()
                },
                "rpm",
            ),
            (
                pb::SetLimitRequest {
                    concurrency: Some(0),
                    ..none.clone()
                },
                "concurrency",
            ),
        ] {
            assert_eq!(limits_to_set(&request).unwrap_err().field, field);
        }
        let some = limits_to_set(&pb::SetLimitRequest {
            concurrency: Some(4),
            ..none
        })
        .unwrap();
        assert_eq!((some.rpm, some.concurrency.map(|c| c.get())), (None, Some(4)));
    }

    #[test]
    fn caps_are_checked_field_by_field() {
        let good = pb::SetCapRequest {
            scope: tenant("acme"),
            period: pb::CapPeriod::Day.into(),
            limit_nano_usd: 1,
            soft_at: 0.5,
            allow_unpriced: true,
        };
        assert_eq!(cap_to_set(&good).unwrap().soft_at, Some(0.5));
        let cases = [
            (
                pb::SetCapRequest {
                    period: 0,
                    ..good.clone()
                },
                "period",
            ),
            (
                pb::SetCapRequest {
                    period: 9,
                    ..good.clone()
                },
                "period",
            ),
            (
                pb::SetCapRequest {
                    limit_nano_usd: 0,
                    ..good.clone()
                },
                "limit_nano_usd",
            ),
            (
                pb::SetCapRequest {
                    limit_nano_usd: -5,
                    ..good.clone()
                },
                "limit_nano_usd",
            ),
            (
                pb::SetCapRequest {
                    soft_at: 1.0,
                    ..good.clone()
                },
                "soft_at",
            ),
            (
                pb::SetCapRequest {
                    soft_at: -0.2,
                    ..good.clone()
                },
                "soft_at",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(cap_to_set(&request).unwrap_err().field, field, "{request:?}");
        }
    }
}
