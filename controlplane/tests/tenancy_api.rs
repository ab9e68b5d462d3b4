//! Tenants and keys through `AdminService`: validation that names the field (with a
//! `google.rpc.BadRequest`), refusals that change nothing, pagination, idempotent creates, and
//! "last used" from the usage ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::collections::HashSet;

use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use common::*;

fn tenant(name: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn key_of(tenant: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        tenant: tenant.into(),
        ..Default::default()
    }
}

/// The field a refusal names in its `BadRequest` details.
fn violated_field(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest");
    assert_eq!(bad.field_violations.len(), 1, "{bad:?}");
    bad.field_violations[0].field.clone()
}

async fn usage_client(cp: &drover_controlplane::ControlPlane) -> UsageServiceClient<Channel> {
    UsageServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap()
}

async fn now_version(client: &mut AdminServiceClient<Channel>) -> u64 {
    version(client).await
}

#[tokio::test]
async fn invalid_tenant_and_key_requests_name_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    client.create_tenant(authed(tenant("acme"), ADMIN)).await.unwrap();
    let before = now_version(&mut client).await;

    let refused = |r: Result<tonic::Response<pb::TenantResponse>, tonic::Status>| r.unwrap_err();
    assert_eq!(
        violated_field(&refused(
            client.create_tenant(authed(tenant("Acme Corp"), ADMIN)).await
        )),
        "name"
    );
    assert_eq!(
        violated_field(&refused(client.create_tenant(authed(tenant(""), ADMIN)).await)),
        "name"
    );
    let mut labelled = tenant("beta");
    labelled.labels.insert("Team".into(), "x".into());
    assert_eq!(
        violated_field(&refused(client.create_tenant(authed(labelled, ADMIN)).await)),
        "labels"
    );
    let mut labelled = tenant("beta");
    labelled.labels.insert("team".into(), "a\nb".into());
    assert_eq!(
        violated_field(&refused(client.create_tenant(authed(labelled, ADMIN)).await)),
        "labels.team"
    );
    let duplicate = client
        .create_tenant(authed(tenant("acme"), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");

    let key_refused = |r: Result<tonic::Response<pb::KeyWithSecretResponse>, tonic::Status>| r.unwrap_err();
    let unknown = key_refused(client.create_key(authed(key_of("nobody"), ADMIN)).await);
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("nobody"));
    let mut empty_entry = key_of("acme");
    empty_entry.models = vec!["gpt".into(), String::new()];
    assert_eq!(
        violated_field(&key_refused(client.create_key(authed(empty_entry, ADMIN)).await)),
        "models[1]"
    );
    let mut twice = key_of("acme");
    twice.models = vec!["gpt".into(), "gpt".into()];
    assert_eq!(
        violated_field(&key_refused(client.create_key(authed(twice, ADMIN)).await)),
        "models[1]"
    );
    let mut past = key_of("acme");
    past.expires_unix_ms = 1_000;
    assert_eq!(
        violated_field(&key_refused(client.create_key(authed(past, ADMIN)).await)),
        "expires_unix_ms"
    );
    let mut bad_id = key_of("acme");
    bad_id.request_id = "not valid!".into();
    assert_eq!(
        violated_field(&key_refused(client.create_key(authed(bad_id, ADMIN)).await)),
        "request_id"
    );
    let revoke = client
        .revoke_key(authed(pb::RevokeKeyRequest { id: "sk-123".into() }, ADMIN))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&revoke), "id");
    let missing = client
        .revoke_key(authed(
            pb::RevokeKeyRequest {
                id: "key_0000000000000000".into(),
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let grace = client
        .rotate_key(authed(
            pb::RotateKeyRequest {
                id: "key_0000000000000000".into(),
                grace_secs: 31 * 86_400,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&grace), "grace_secs");
    let page = client
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 5_000,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&page), "page_size");

    assert_eq!(now_version(&mut client).await, before, "nothing changed");
    let keys = client
        .list_keys(authed(pb::ListKeysRequest::default(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert!(keys.keys.is_empty());
}

#[tokio::test]
async fn keys_page_through_by_id_and_filter_by_tenant_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    for t in ["a", "b"] {
        client.create_tenant(authed(tenant(t), ADMIN)).await.unwrap();
    }
    let mut of_a = Vec::new();
    for i in 0..7 {
        let t = if i % 2 == 0 { "a" } else { "b" };
        let k = client
            .create_key(authed(key_of(t), ADMIN))
            .await
            .unwrap()
            .into_inner();
        if t == "a" {
            of_a.push(k.key.unwrap().id);
        }
    }
    client
        .revoke_key(authed(pb::RevokeKeyRequest { id: of_a[0].clone() }, ADMIN))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_keys(authed(
                pb::ListKeysRequest {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
                ADMIN,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "by id");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7, "no key twice");

    let active_of_a = client
        .list_keys(authed(
            pb::ListKeysRequest {
                tenant: "a".into(),
                state: pb::KeyState::Active as i32,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active_of_a.keys.len(), 3);
    assert!(
        active_of_a
            .keys
            .iter()
            .all(|k| k.tenant == "a" && k.state == pb::KeyState::Active as i32)
    );
    let revoked = client
        .list_keys(authed(
            pb::ListKeysRequest {
                state: pb::KeyState::Revoked as i32,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.keys.len(), 1);
    assert!(revoked.keys[0].revoked_unix_ms > 0);
    // A token is only good for the filters it was made with.
    let first = client
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 1,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    let err = client
        .list_keys(authed(
            pb::ListKeysRequest {
                page_size: 1,
                tenant: "a".into(),
                page_token: first.next_page_token,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err), "page_token");
    let unknown = client
        .list_keys(authed(
            pb::ListKeysRequest {
                tenant: "zzz".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let tenants = client
        .list_tenants(authed(pb::ListTenantsRequest::default(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<_> = tenants
        .tenants
        .iter()
        .map(|t| (t.name.as_str(), t.active_keys))
        .collect();
    assert_eq!(counts, [("a", 3), ("b", 3)]);
}

#[tokio::test]
async fn a_retried_create_with_its_request_id_makes_one_key_and_returns_the_same_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut t = tenant("acme");
    t.request_id = "tenant-1".into();
    let first_t = client
        .create_tenant(authed(t.clone(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    let again_t = client.create_tenant(authed(t, ADMIN)).await.unwrap().into_inner();
    assert_eq!(first_t, again_t);

    let mut k = key_of("acme");
    k.request_id = "6f1c0e2a-3b4d-4c5e-8f90-a1b2c3d4e5f6".into();
    k.models = vec!["gpt".into()];
    let first = client
        .create_key(authed(k.clone(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .create_key(authed(k.clone(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.secret, again.secret);
    assert_eq!(first.key, again.key);
    let listed = client
        .list_keys(authed(pb::ListKeysRequest::default(), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1);
    // The same id with other arguments is refused.
    k.models = vec!["other".into()];
    let err = client.create_key(authed(k, ADMIN)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // Listings never show a secret.
    assert!(!format!("{listed:?}").contains(&first.secret));
}

#[tokio::test]
async fn last_used_comes_from_the_usage_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, _shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    client.create_tenant(authed(tenant("acme"), ADMIN)).await.unwrap();
    let key = client
        .create_key(authed(key_of("acme"), ADMIN))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(key.last_used_unix_ms, 0);
    let mut usage = usage_client(&cp).await;
    let at = key.created_unix_ms + 5_000;
    let record = |id: &str, time: i64| pb::UsageRecord {
        request_id: id.into(),
        time_unix_ms: time,
        tenant: "acme".into(),
        key_id: key.id.clone(),
        alias: "m".into(),
        provider: "p".into(),
        model: "m".into(),
        status: 200,
        endpoint: "/v1/chat/completions".into(),
        ..Default::default()
    };
    usage
        .report(authed(
            pb::UsageBatch {
                dataplane_id: "dp".into(),
                records: vec![record("r1", at - 1_000), record("r2", at)],
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let got = client
        .get_key(authed(pb::GetKeyRequest { id: key.id.clone() }, ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.key.unwrap().last_used_unix_ms, at);
    assert_eq!(got.version, now_version(&mut client).await, "not a policy change");
}
