//! The tenant and key RPCs of `AdminService`: validation, secrets, and the calls into the
//! store. `admin_service` delegates here.
//!
//! Secrets are made here (`drv_` and 43 characters of `[A-Za-z0-9]` from the OS-seeded
//! generator, 256 bits) and leave only in the answer of the call that made them; the store
//! keeps their SHA-256 (and, for 24 hours, an encrypted copy of the answer when the caller gave
//! a request id).

use drover_proto::model::now_unix_ms;
use std::collections::HashSet;

use drover_proto::model::{
    InvalidPolicy, KEY_ID_BODY_LEN, KEY_ID_PREFIX, Labels, MAX_GRACE_SECS, OnCpLoss, SECRET_BODY_LEN,
    SECRET_PREFIX, SHOWN_SECRET_LEN, validate_expiry, validate_key_id, validate_key_models,
    validate_key_name, validate_label, validate_labels, validate_request_id, validate_tenant_name,
};
use drover_proto::pb;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;
use crate::store::idempotency::Idempotency;
use crate::store::keys::{KeyState, NewKey};
use crate::store::page::Page;
use crate::store::tenants::{TenantState, encode_labels};
use crate::store::{NewSecret, Store, TenantUpdate};

fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A new secret and what the store keeps of it.
pub fn new_secret() -> NewSecret {
    let secret = format!("{SECRET_PREFIX}{}", random_alnum(SECRET_BODY_LEN));
    NewSecret {
        prefix: secret[..SHOWN_SECRET_LEN].to_owned(),
        hash: Sha256::digest(secret.as_bytes()).into(),
        secret,
    }
}

/// A new key id: `key_` and 16 random characters.
pub fn new_key_id() -> String {
    format!("{KEY_ID_PREFIX}{}", random_alnum(KEY_ID_BODY_LEN))
}

fn tenant_state(field: &str, state: i32) -> Result<Option<TenantState>, InvalidPolicy> {
    if pb::TenantState::try_from(state).is_err() {
        return Err(InvalidPolicy::new(field, format!("unknown tenant state {state}")));
    }
    Ok(TenantState::from_wire(state))
}

fn key_state(field: &str, state: i32) -> Result<Option<KeyState>, InvalidPolicy> {
    if pb::KeyState::try_from(state).is_err() {
        return Err(InvalidPolicy::new(field, format!("unknown key state {state}")));
    }
    Ok(KeyState::from_wire(state))
}

/// A request id binds a retry to its caller: another identity repeating it is refused
/// (ALREADY_EXISTS), never answered with the first call's answer. `root`'s calls hash as they
/// did before identities existed.
fn caller_argument<'a>(arguments: &mut Vec<&'a [u8]>, actor: &'a str) {
    if actor != crate::roles::ROOT {
        arguments.push(actor.as_bytes());
    }
}

pub async fn create_tenant(
    store: &Store,
    r: pb::CreateTenantRequest,
    actor: &str,
) -> Result<pb::TenantResponse, StoreError> {
    validate_tenant_name("name", &r.name)?;
    validate_labels("labels", &r.labels)?;
    validate_request_id("request_id", &r.request_id)?;
    let on_cp_loss = OnCpLoss::from_wire(r.on_cp_loss)?.unwrap_or_default();
    let labels: Labels = r.labels.into_iter().collect();
    let encoded = encode_labels(&labels);
    let mut arguments = vec![r.name.as_bytes(), encoded.as_bytes()];
    // Only a non-default mode is an argument, so that a retry of a create made before the
    // mode existed (the same request, then) still matches.
    if on_cp_loss != OnCpLoss::default() {
        arguments.push(on_cp_loss.as_str().as_bytes());
    }
    caller_argument(&mut arguments, actor);
    let idempotency = Idempotency::new("CreateTenant", &r.request_id, &arguments);
    let answer = store
        .create_tenant(r.name, labels, on_cp_loss, idempotency)
        .await?;
    if let Some(t) = &answer.tenant {
        tracing::info!(tenant = %t.name, version = answer.version, "tenant created");
    }
    Ok(answer)
}

pub async fn get_tenant(store: &Store, r: pb::GetTenantRequest) -> Result<pb::TenantResponse, StoreError> {
    validate_tenant_name("name", &r.name)?;
    store.get_tenant(r.name).await
}

pub async fn list_tenants(
    store: &Store,
    r: pb::ListTenantsRequest,
) -> Result<pb::ListTenantsResponse, StoreError> {
    let state = tenant_state("state", r.state)?;
    let page = Page::from_wire(r.page_size, &r.page_token, format!("tenants state={}", r.state))?;
    let (tenants, next) = store.list_tenants(state, page).await?;
    Ok(pb::ListTenantsResponse {
        tenants,
        next_page_token: next.map(|t| t.into_wire()).unwrap_or_default(),
    })
}

pub async fn update_tenant(
    store: &Store,
    r: pb::UpdateTenantRequest,
) -> Result<pb::TenantResponse, StoreError> {
    validate_tenant_name("name", &r.name)?;
    let state = tenant_state("state", r.state)?;
    let on_cp_loss = OnCpLoss::from_wire(r.on_cp_loss)?;
    validate_labels("set_labels", &r.set_labels)?;
    let mut removing = HashSet::new();
    for (i, k) in r.remove_labels.iter().enumerate() {
        validate_label(&format!("remove_labels[{i}]"), k, "")?;
        removing.insert(k.as_str());
    }
    if let Some(k) = r.set_labels.keys().find(|k| removing.contains(k.as_str())) {
        return Err(
            InvalidPolicy::new("remove_labels", format!("label {k:?} is both set and removed")).into(),
        );
    }
    let update = TenantUpdate {
        state,
        set_labels: r.set_labels.into_iter().collect(),
        remove_labels: r.remove_labels,
        on_cp_loss,
    };
    let name = r.name;
    let answer = store.update_tenant(name.clone(), update).await?;
    tracing::info!(tenant = %name, ?state, ?on_cp_loss, version = answer.version, "tenant updated");
    Ok(answer)
}

pub async fn delete_tenant(
    store: &Store,
    r: pb::DeleteTenantRequest,
) -> Result<pb::DeleteTenantResponse, StoreError> {
    validate_tenant_name("name", &r.name)?;
    let answer = store.delete_tenant(r.name.clone(), r.force).await?;
    tracing::info!(tenant = %r.name, revoked_keys = answer.revoked_keys, version = answer.version, "tenant deleted");
    Ok(answer)
}

/// Creates key `id` (from [`new_key_id`]).
pub async fn create_key(
    store: &Store,
    r: pb::CreateKeyRequest,
    id: String,
    actor: &str,
) -> Result<pb::KeyWithSecretResponse, StoreError> {
    validate_tenant_name("tenant", &r.tenant)?;
    validate_key_name("name", &r.name)?;
    validate_key_models("models", &r.models)?;
    validate_expiry("expires_unix_ms", r.expires_unix_ms, now_unix_ms())?;
    validate_request_id("request_id", &r.request_id)?;
    let models = r.models.join("\n");
    let expires = r.expires_unix_ms.to_le_bytes();
    let mut arguments = vec![
        r.tenant.as_bytes(),
        r.name.as_bytes(),
        models.as_bytes(),
        &expires,
    ];
    caller_argument(&mut arguments, actor);
    let idempotency = Idempotency::new("CreateKey", &r.request_id, &arguments);
    let key = NewKey {
        id,
        tenant_id: 0,
        name: r.name,
        prefix: String::new(),
        hash: [0; 32],
        models: r.models,
        created_unix_ms: 0,
        expires_unix_ms: r.expires_unix_ms,
    };
    let answer = store.create_key(r.tenant, key, new_secret(), idempotency).await?;
    if let Some(k) = &answer.key {
        tracing::info!(key = %k.id, tenant = %k.tenant, version = answer.version, "key created");
    }
    Ok(answer)
}

pub async fn get_key(store: &Store, r: pb::GetKeyRequest) -> Result<pb::KeyResponse, StoreError> {
    validate_key_id("id", &r.id)?;
    store.get_key(r.id).await
}

pub async fn list_keys(store: &Store, r: pb::ListKeysRequest) -> Result<pb::ListKeysResponse, StoreError> {
    let tenant = if r.tenant.is_empty() {
        None
    } else {
        validate_tenant_name("tenant", &r.tenant)?;
        Some(r.tenant.clone())
    };
    let state = key_state("state", r.state)?;
    let page = Page::from_wire(
        r.page_size,
        &r.page_token,
        format!("keys tenant={} state={}", r.tenant, r.state),
    )?;
    let (keys, next) = store.list_keys(tenant, state, page).await?;
    Ok(pb::ListKeysResponse {
        keys,
        next_page_token: next.map(|t| t.into_wire()).unwrap_or_default(),
    })
}

pub async fn revoke_key(store: &Store, r: pb::RevokeKeyRequest) -> Result<pb::KeyResponse, StoreError> {
    validate_key_id("id", &r.id)?;
    let answer = store.revoke_key(r.id.clone()).await?;
    tracing::info!(key = %r.id, version = answer.version, "key revoked");
    Ok(answer)
}

pub async fn rotate_key(
    store: &Store,
    r: pb::RotateKeyRequest,
    actor: &str,
) -> Result<pb::KeyWithSecretResponse, StoreError> {
    validate_key_id("id", &r.id)?;
    if r.grace_secs > MAX_GRACE_SECS {
        return Err(InvalidPolicy::new(
            "grace_secs",
            format!("{} is more than {MAX_GRACE_SECS} (30 days)", r.grace_secs),
        )
        .into());
    }
    validate_request_id("request_id", &r.request_id)?;
    let grace = r.grace_secs.to_le_bytes();
    let mut arguments = vec![r.id.as_bytes(), &grace];
    caller_argument(&mut arguments, actor);
    let idempotency = Idempotency::new("RotateKey", &r.request_id, &arguments);
    let grace_ms = i64::from(r.grace_secs) * 1000;
    let answer = store
        .rotate_key(r.id.clone(), new_secret(), grace_ms, idempotency)
        .await?;
    tracing::info!(key = %r.id, grace_secs = r.grace_secs, version = answer.version, "key rotated");
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use drover_proto::model::is_secret_shaped;

    use super::*;

    #[test]
    fn secrets_have_the_documented_shape_and_differ() {
        let a = new_secret();
        let b = new_secret();
        assert!(is_secret_shaped(&a.secret), "{}", a.secret);
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(&a.prefix) && a.prefix.len() == SHOWN_SECRET_LEN);
        assert_eq!(a.hash, <[u8; 32]>::from(Sha256::digest(a.secret.as_bytes())));
        validate_key_id("id", &new_key_id()).unwrap();
    }
}
