//! Admin identities, roles and the audit log, end to end on a control plane on loopback: every
//! RPC as every role against the table in docs/admin-roles.md, tenant scopes, one audit record
//! per change (refused or not), tampering caught by `VerifyAudit`, retention, following, and a
//! control plane killed in a burst of changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = AdminServiceClient<Channel>;

/// The table in docs/admin-roles.md: RPC → (changes, allowed for viewer/operator/admin,
/// open to scoped identities).
fn docs_table() -> Vec<(String, bool, [bool; 3], bool)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-roles.md")).unwrap();
    let word = |cell: &str, yes: &str| cell == yes;
    let rows: Vec<_> = doc
        .lines()
        .skip_while(|l| !l.starts_with("| RPC |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let c: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                c[0].to_owned(),
                word(c[1], "yes"),
                [
                    word(c[2], "allowed"),
                    word(c[3], "allowed"),
                    word(c[4], "allowed"),
                ],
                word(c[5], "own tenant"),
            )
        })
        .collect();
    assert!(rows.len() >= 35, "{rows:?}");
    rows
}

async fn create_tenant(c: &mut Client, name: &str) {
    c.create_tenant(authed(
        pb::CreateTenantRequest {
            name: name.into(),
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .unwrap();
}

async fn create_key(c: &mut Client, token: &str, tenant: &str) -> Result<String, tonic::Status> {
    Ok(c.create_key(authed(
        pb::CreateKeyRequest {
            tenant: tenant.into(),
            ..Default::default()
        },
        token,
    ))
    .await?
    .into_inner()
    .key
    .unwrap()
    .id)
}

async fn identity(c: &mut Client, name: &str, role: pb::AdminRole, tenant: &str) -> String {
    let answer = c
        .create_admin(authed(
            pb::CreateAdminRequest {
                name: name.into(),
                role: role as i32,
                tenant: tenant.into(),
                request_id: String::new(),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    let info = answer.admin.unwrap();
    assert_eq!((info.name.as_str(), info.tenant.as_str()), (name, tenant));
    assert!(answer.token.starts_with("drv_admin_"), "{}", answer.token);
    assert!(answer.token.starts_with(&info.token_prefix));
    answer.token
}

/// Every record from the start, oldest first.
async fn audit(c: &mut Client, token: &str) -> Vec<pb::AuditRecord> {
    let mut all = vec![];
    let mut after = 0;
    loop {
        let page = c
            .list_audit(authed(
                pb::ListAuditRequest {
                    after_seq: after,
                    limit: 1000,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.records);
        if page.next_after_seq == 0 {
            return all;
        }
        after = page.next_after_seq;
    }
}

async fn verify(c: &mut Client, anchor: Option<pb::AuditAnchor>) -> pb::VerifyAuditResponse {
    c.verify_audit(authed(pb::VerifyAuditRequest { anchor }, ADMIN))
        .await
        .unwrap()
        .into_inner()
}

/// Calls `rpc` with an empty request, as gRPC bytes (so every RPC, streaming included, is
/// reached the same way); the status code it ended with and its message.
async fn raw_call(addr: std::net::SocketAddr, rpc: &str, token: &str) -> (Code, String) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = format!("/drover.v1.AdminService/{rpc}").parse().unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let result = if rpc == "FollowAudit" {
        grpc.server_streaming(authed((), token), path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(authed((), token), path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

#[tokio::test]
async fn every_role_is_allowed_or_refused_each_rpc_as_the_docs_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    create_tenant(&mut c, "acme").await;
    let viewer = identity(&mut c, "vera", pb::AdminRole::Viewer, "").await;
    let operator = identity(&mut c, "otto", pb::AdminRole::Operator, "").await;
    let admin_token = identity(&mut c, "ada", pb::AdminRole::Admin, "").await;
    let scoped_admin = identity(&mut c, "acme-admin", pb::AdminRole::Admin, "acme").await;
    let scoped_viewer = identity(&mut c, "acme-viewer", pb::AdminRole::Viewer, "acme").await;
    let callers = [
        ("vera", viewer.as_str(), 0, false),
        ("otto", operator.as_str(), 1, false),
        ("ada", admin_token.as_str(), 2, false),
        ("acme-admin", scoped_admin.as_str(), 2, true),
        ("acme-viewer", scoped_viewer.as_str(), 0, true),
    ];
    let table = docs_table();
    let mut refusals = 0;
    for (rpc, _, allowed, scoped_ok) in &table {
        for (name, token, role, scoped) in callers {
            let expect_allowed = allowed[role] && (!scoped || *scoped_ok);
            let before = version(&mut c).await;
            let head = verify(&mut c, None).await.head.unwrap().seq;
            let (code, message) = raw_call(cp.grpc_addr(), rpc, token).await;
            let refused_by_role = code == Code::PermissionDenied && message.contains("may not call");
            assert_eq!(
                !refused_by_role, expect_allowed,
                "{name} calling {rpc}: {code:?} {message}"
            );
            if refused_by_role {
                refusals += 1;
                assert!(
                    message.contains(name) && message.contains(rpc.as_str()),
                    "{message}"
                );
                assert_eq!(version(&mut c).await, before, "{name} {rpc} changed the version");
                // Exactly the refusal is recorded, nothing else.
                let records = audit(&mut c, ADMIN).await;
                let new: Vec<_> = records.iter().filter(|r| r.seq > head).collect();
                assert_eq!(new.len(), 1, "{name} {rpc}: {new:?}");
                assert_eq!(
                    (
                        new[0].actor.as_str(),
                        new[0].rpc.as_str(),
                        new[0].outcome.as_str()
                    ),
                    (name, rpc.as_str(), "permission_denied")
                );
            } else {
                assert_ne!(code, Code::Unauthenticated, "{name} {rpc}");
            }
        }
        // No token, or a wrong one: refused whatever the RPC.
        for token in ["", "drv_admin_nope"] {
            let (code, _) = raw_call(cp.grpc_addr(), rpc, token).await;
            assert_eq!(code, Code::Unauthenticated, "{rpc} with {token:?}");
        }
    }
    assert!(refusals > 60, "{refusals}");
    // The bootstrap token is root and may call everything.
    for (rpc, ..) in &table {
        let (code, message) = raw_call(cp.grpc_addr(), rpc, ADMIN).await;
        assert!(
            !(code == Code::PermissionDenied || code == Code::Unauthenticated),
            "root {rpc}: {message}"
        );
    }
    // A revoked identity's token stops working at once.
    c.revoke_admin(authed(pb::RevokeAdminRequest { name: "otto".into() }, ADMIN))
        .await
        .unwrap();
    let (code, _) = raw_call(cp.grpc_addr(), "ListProviders", &operator).await;
    assert_eq!(code, Code::Unauthenticated);
    let admins = c
        .list_admins(authed(pb::ListAdminsRequest {}, &viewer))
        .await
        .unwrap()
        .into_inner()
        .admins;
    let names: Vec<_> = admins.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["root", "vera", "otto", "ada", "acme-admin", "acme-viewer"]
    );
    assert!(admins[2].revoked_unix_ms > 0 && admins[1].revoked_unix_ms == 0);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_tenant_scoped_identity_sees_and_touches_only_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "other").await;
    let theirs = create_key(&mut c, ADMIN, "other").await.unwrap();
    let acme = identity(&mut c, "acme-admin", pb::AdminRole::Admin, "acme").await;
    let mine = create_key(&mut c, &acme, "acme").await.unwrap();

    let denied = |e: tonic::Status, what: &str| {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains(what), "{}", e.message());
    };
    let before = version(&mut c).await;
    denied(
        create_key(&mut c, &acme, "other").await.unwrap_err(),
        "tenant \"other\"",
    );
    let e = c
        .revoke_key(authed(pb::RevokeKeyRequest { id: theirs.clone() }, &acme))
        .await
        .unwrap_err();
    denied(e, &theirs);
    // A key id that does not exist gets the same answer.
    let e = c
        .get_key(authed(
            pb::GetKeyRequest {
                id: "key_0000000000000000".into(),
            },
            &acme,
        ))
        .await
        .unwrap_err();
    denied(e, "outside");
    let e = c
        .set_limit(authed(
            pb::SetLimitRequest {
                scope: Some(pb::LimitScope {
                    scope: Some(pb::limit_scope::Scope::Tenant("other".into())),
                }),
                rpm: Some(10),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap_err();
    denied(e, "tenant \"other\"");
    let e = c
        .list_keys(authed(
            pb::ListKeysRequest {
                tenant: "other".into(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap_err();
    denied(e, "tenant \"other\"");
    let e = c
        .query_usage(authed(
            pb::UsageQuery {
                tenant: "other".into(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap_err();
    denied(e, "tenant \"other\"");
    let e = c
        .get_tenant(authed(pb::GetTenantRequest { name: "other".into() }, &acme))
        .await
        .unwrap_err();
    denied(e, "tenant \"other\"");
    assert_eq!(version(&mut c).await, before, "refusals change nothing");
    let their_key = c
        .get_key(authed(pb::GetKeyRequest { id: theirs.clone() }, ADMIN))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(their_key.state, pb::KeyState::Active as i32);

    // Lists without a tenant answer with its own rows only.
    let keys = c
        .list_keys(authed(pb::ListKeysRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<_> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, [mine.as_str()]);
    let tenants = c
        .list_tenants(authed(pb::ListTenantsRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0].name, "acme");
    // Usage: its own tenant's rows only, whatever the grouping.
    let now = drover_proto::model::now_unix_ms();
    let record = |id: &str, tenant: &str, key: &str, cost| pb::UsageRecord {
        request_id: id.into(),
        // After the tenants were created: a scoped identity's usage starts at its tenant's creation.
        time_unix_ms: now,
        tenant: tenant.into(),
        key_id: key.into(),
        alias: "m".into(),
        provider: "p".into(),
        model: "m".into(),
        cost_nano_usd: cost,
        status: 200,
        endpoint: "/v1/chat/completions".into(),
        ..Default::default()
    };
    pb::usage_service_client::UsageServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap()
        .report(authed(
            pb::UsageBatch {
                dataplane_id: "dp-1".into(),
                records: vec![
                    record("r1", "acme", &mine, 5),
                    record("r2", "other", &theirs, 7),
                    // Of an earlier tenant called acme, deleted before this one was created.
                    pb::UsageRecord {
                        time_unix_ms: now - 60_000,
                        ..record("r0", "acme", "key_0000000000000000", 11)
                    },
                ],
            },
            DATAPLANE,
        ))
        .await
        .unwrap();
    for group_by in [
        pb::UsageGroupBy::Unspecified,
        pb::UsageGroupBy::Tenant,
        pb::UsageGroupBy::Key,
    ] {
        let report = c
            .query_usage(authed(
                pb::UsageQuery {
                    group_by: group_by as i32,
                    ..Default::default()
                },
                &acme,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(report.total.unwrap().cost_nano_usd, 5, "{group_by:?}");
        assert!(
            report
                .rows
                .iter()
                .all(|r| r.group != "other" && r.group != theirs)
        );
    }
    let e = c
        .query_usage(authed(
            pb::UsageQuery {
                key_id: theirs.clone(),
                ..Default::default()
            },
            &acme,
        ))
        .await
        .unwrap_err();
    denied(e, &theirs);
    // Its own tenant's limits work.
    c.set_limit(authed(
        pb::SetLimitRequest {
            scope: Some(pb::LimitScope {
                scope: Some(pb::limit_scope::Scope::KeyId(mine.clone())),
            }),
            rpm: Some(10),
            ..Default::default()
        },
        &acme,
    ))
    .await
    .unwrap();
    // Its audit records: its own tenant's, never another's.
    let records = audit(&mut c, &acme).await;
    assert!(!records.is_empty());
    // Its own refused calls name what it asked for; nothing else of the other tenant shows.
    for r in records.iter().filter(|r| r.actor != "acme-admin") {
        assert!(
            !r.request.contains("other") && !r.target.contains(&theirs),
            "{r:?}"
        );
        assert_ne!(r.target, "tenant/other", "{r:?}");
    }
    assert!(
        records
            .iter()
            .any(|r| r.rpc == "CreateKey" && r.target == format!("key/{mine}") && r.outcome == "ok")
    );
    assert!(
        records
            .iter()
            .all(|r| r.rpc != "CreateTenant" || r.target == "tenant/acme")
    );
    let everything = audit(&mut c, ADMIN).await;
    assert!(everything.len() > records.len());
    // Deleting its tenant ends the identity.
    c.delete_tenant(authed(
        pb::DeleteTenantRequest {
            name: "acme".into(),
            force: true,
        },
        ADMIN,
    ))
    .await
    .unwrap();
    let e = c
        .list_keys(authed(pb::ListKeysRequest::default(), &acme))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn every_change_and_every_refusal_leaves_one_record_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;

    // (rpc, succeeds?) for a sequence of calls, each checked against the newest record.
    let expect = |records: &[pb::AuditRecord], rpc: &str, outcome: &str, target: &str| {
        let last = records.last().unwrap();
        assert_eq!(
            (
                last.rpc.as_str(),
                last.outcome.as_str(),
                last.target.as_str(),
                last.actor.as_str()
            ),
            (rpc, outcome, target, "root"),
            "{last:?}"
        );
        assert!(last.source.starts_with("127.0.0.1:"), "{last:?}");
        assert_eq!(last.role, "admin");
        last.clone()
    };
    let mut seen = 0;
    let mut step = async |c: &mut Client| {
        let records = audit(c, ADMIN).await;
        assert_eq!(
            records.len(),
            seen + 1,
            "one record per call: {:?}",
            &records[seen..]
        );
        seen = records.len();
        records
    };

    c.add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap();
    let r = step(&mut c).await;
    let rec = expect(&r, "AddProvider", "ok", "provider/openai");
    assert!(!rec.request.contains(PLAINTEXT_KEY), "{}", rec.request);
    assert!(rec.request.contains("[redacted]"), "{}", rec.request);
    assert_eq!(rec.version, version(&mut c).await);
    c.add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap_err();
    let r = step(&mut c).await;
    let rec = expect(&r, "AddProvider", "already_exists", "provider/openai");
    assert!(!rec.request.contains(PLAINTEXT_KEY));
    assert!(rec.message.contains("already exists"), "{rec:?}");
    c.set_route(authed(set_route("chat", "openai"), ADMIN))
        .await
        .unwrap();
    expect(&step(&mut c).await, "SetRoute", "ok", "route/chat");
    c.set_route(authed(set_route("chat2", "ghost"), ADMIN))
        .await
        .unwrap_err();
    expect(&step(&mut c).await, "SetRoute", "invalid_argument", "route/chat2");
    c.set_price(authed(set_price("m1", 1.0), ADMIN)).await.unwrap();
    expect(&step(&mut c).await, "SetPrice", "ok", "price/m1");
    c.set_module(authed(set_module("auth", true), ADMIN))
        .await
        .unwrap();
    expect(&step(&mut c).await, "SetModule", "ok", "module/auth");
    c.set_module(authed(set_module("auth", true), ADMIN))
        .await
        .unwrap();
    expect(&step(&mut c).await, "SetModule", "unchanged", "module/auth");
    c.set_module(authed(set_module("nope", true), ADMIN))
        .await
        .unwrap_err();
    expect(
        &step(&mut c).await,
        "SetModule",
        "invalid_argument",
        "module/nope",
    );
    create_tenant(&mut c, "acme").await;
    expect(&step(&mut c).await, "CreateTenant", "ok", "tenant/acme");
    let key = create_key(&mut c, ADMIN, "acme").await.unwrap();
    let rec = expect(&step(&mut c).await, "CreateKey", "ok", &format!("key/{key}"));
    assert_eq!(rec.version, version(&mut c).await);
    create_key(&mut c, ADMIN, "Not A Tenant").await.unwrap_err();
    step(&mut c).await;
    c.rotate_key(authed(
        pb::RotateKeyRequest {
            id: key.clone(),
            ..Default::default()
        },
        ADMIN,
    ))
    .await
    .unwrap();
    expect(&step(&mut c).await, "RotateKey", "ok", &format!("key/{key}"));
    c.revoke_key(authed(pb::RevokeKeyRequest { id: key.clone() }, ADMIN))
        .await
        .unwrap();
    expect(&step(&mut c).await, "RevokeKey", "ok", &format!("key/{key}"));
    c.revoke_key(authed(pb::RevokeKeyRequest { id: key.clone() }, ADMIN))
        .await
        .unwrap();
    expect(
        &step(&mut c).await,
        "RevokeKey",
        "unchanged",
        &format!("key/{key}"),
    );
    let token = c
        .create_admin(authed(
            pb::CreateAdminRequest {
                name: "vera".into(),
                role: pb::AdminRole::Viewer as i32,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let rec = expect(&step(&mut c).await, "CreateAdmin", "ok", "admin/vera");
    assert!(!rec.request.contains(&token));
    c.create_admin(authed(pb::CreateAdminRequest::default(), ADMIN))
        .await
        .unwrap_err();
    expect(&step(&mut c).await, "CreateAdmin", "invalid_argument", "admin/");
    c.revoke_admin(authed(pb::RevokeAdminRequest { name: "root".into() }, ADMIN))
        .await
        .unwrap_err();
    expect(
        &step(&mut c).await,
        "RevokeAdmin",
        "failed_precondition",
        "admin/root",
    );
    // Reads leave nothing.
    c.list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
        .await
        .unwrap();
    c.list_keys(authed(pb::ListKeysRequest::default(), ADMIN))
        .await
        .unwrap();
    assert_eq!(audit(&mut c, ADMIN).await.len(), seen);
    // A viewer refused: recorded with its name.
    c.remove_route(authed(pb::RemoveRouteRequest { alias: "chat".into() }, &token))
        .await
        .unwrap_err();
    let records = audit(&mut c, ADMIN).await;
    let last = records.last().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.role.as_str(),
            last.rpc.as_str(),
            last.outcome.as_str()
        ),
        ("vera", "viewer", "RemoveRoute", "permission_denied")
    );
    seen = records.len();

    // A flood of bad tokens from one source is recorded up to its budget, then counted.
    for _ in 0..100 {
        let (code, _) = raw_call(cp.grpc_addr(), "ListTenants", "drv_admin_guess").await;
        assert_eq!(code, Code::Unauthenticated);
    }
    let records = audit(&mut c, ADMIN).await;
    let flood = records.len() - seen;
    assert!((20..=40).contains(&flood), "{flood} records of 100 refusals");
    assert!(
        records[seen..]
            .iter()
            .all(|r| r.outcome == "unauthenticated" && r.actor.is_empty())
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    raw_call(cp.grpc_addr(), "ListTenants", "drv_admin_guess").await;
    let records = audit(&mut c, ADMIN).await;
    let last = records.last().unwrap();
    assert!(last.unrecorded >= 50, "{last:?}");
    assert!(!records.iter().any(|r| r.request.contains("drv_admin_guess")));

    // The rest of the changes, each one record naming its target.
    let tenant_scope = || {
        Some(pb::LimitScope {
            scope: Some(pb::limit_scope::Scope::Tenant("acme".into())),
        })
    };
    let newest = async |c: &mut Client, before: usize| {
        let records = audit(c, ADMIN).await;
        assert_eq!(records.len(), before + 1, "{:?}", &records[before..]);
        let last = records.last().unwrap().clone();
        (records.len(), (last.rpc, last.outcome, last.target))
    };
    let n = records.len();
    let calls: Vec<(&str, &str, &str)> = vec![
        ("SetLimit", "ok", "tenant/acme"),
        ("SetLimit", "invalid_argument", ""),
        ("RemoveLimit", "ok", "tenant/acme"),
        ("SetCap", "ok", "tenant/acme"),
        ("RemoveCap", "ok", "tenant/acme"),
        ("UpdateTenant", "ok", "tenant/acme"),
        ("RemovePrice", "ok", "price/m1"),
        ("RemoveRoute", "ok", "route/chat"),
        ("RemoveProvider", "ok", "provider/openai"),
        ("RevokeAdmin", "ok", "admin/vera"),
        ("DeleteTenant", "ok", "tenant/acme"),
    ];
    let mut n = n;
    for (rpc, outcome, target) in calls {
        let result = match (rpc, outcome) {
            ("SetLimit", "ok") => c
                .set_limit(authed(
                    pb::SetLimitRequest {
                        scope: tenant_scope(),
                        rpm: Some(10),
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            ("SetLimit", _) => c
                .set_limit(authed(pb::SetLimitRequest::default(), ADMIN))
                .await
                .map(|_| ()),
            ("RemoveLimit", _) => c
                .remove_limit(authed(
                    pb::RemoveLimitRequest {
                        scope: tenant_scope(),
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            ("SetCap", _) => c
                .set_cap(authed(
                    pb::SetCapRequest {
                        scope: tenant_scope(),
                        period: pb::CapPeriod::Total as i32,
                        limit_nano_usd: 1_000_000,
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            ("RemoveCap", _) => c
                .remove_cap(authed(
                    pb::RemoveCapRequest {
                        scope: tenant_scope(),
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            ("UpdateTenant", _) => c
                .update_tenant(authed(
                    pb::UpdateTenantRequest {
                        name: "acme".into(),
                        state: pb::TenantState::Suspended as i32,
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            ("RemovePrice", _) => c
                .remove_price(authed(pb::RemovePriceRequest { model: "m1".into() }, ADMIN))
                .await
                .map(|_| ()),
            ("RemoveRoute", _) => c
                .remove_route(authed(pb::RemoveRouteRequest { alias: "chat".into() }, ADMIN))
                .await
                .map(|_| ()),
            ("RemoveProvider", _) => c
                .remove_provider(authed(
                    pb::RemoveProviderRequest {
                        name: "openai".into(),
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            ("RevokeAdmin", _) => c
                .revoke_admin(authed(pb::RevokeAdminRequest { name: "vera".into() }, ADMIN))
                .await
                .map(|_| ()),
            ("DeleteTenant", _) => c
                .delete_tenant(authed(
                    pb::DeleteTenantRequest {
                        name: "acme".into(),
                        force: true,
                    },
                    ADMIN,
                ))
                .await
                .map(|_| ()),
            other => panic!("{other:?}"),
        };
        assert_eq!(result.is_ok(), outcome == "ok", "{rpc}: {result:?}");
        let (len, last) = newest(&mut c, n).await;
        n = len;
        assert_eq!(
            (last.0.as_str(), last.1.as_str(), last.2.as_str()),
            (rpc, outcome, target)
        );
    }
    // Every RPC that changes state has now left an `ok` record.
    let records = audit(&mut c, ADMIN).await;
    for (rpc, changes, ..) in docs_table() {
        if changes {
            assert!(
                records.iter().any(|r| r.rpc == rpc && r.outcome == "ok"),
                "no ok record of {rpc}"
            );
        }
    }

    let v = verify(&mut c, None).await;
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, records.len() as u64);
    stop(cp, shutdown).await;
}

async fn make_changes(c: &mut Client, n: usize) {
    create_tenant(c, "acme").await;
    for _ in 0..n {
        create_key(c, ADMIN, "acme").await.unwrap();
    }
}

/// Runs `sql` on the stopped control plane's database, restarts it and verifies.
async fn tampered(sql: &str, anchor: Option<pb::AuditAnchor>) -> pb::VerifyAuditResponse {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    make_changes(&mut c, 9).await;
    let clean = verify(&mut c, None).await;
    assert!(clean.ok && clean.records == 10, "{clean:?}");
    stop(cp, shutdown).await;
    let conn = rusqlite::Connection::open(dir.path().join("drover.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    let v = verify(&mut c, anchor.or(clean.head)).await;
    stop(cp, shutdown).await;
    v
}

#[tokio::test]
async fn altered_deleted_inserted_and_truncated_records_are_each_caught() {
    let altered = tampered("UPDATE audit SET actor = 'mallory' WHERE seq = 5", None).await;
    assert!(!altered.ok);
    assert_eq!(altered.first_bad_seq, 5, "{altered:?}");
    assert!(altered.problem.contains("altered"), "{}", altered.problem);

    let deleted = tampered("DELETE FROM audit WHERE seq = 5", None).await;
    assert_eq!((deleted.ok, deleted.first_bad_seq), (false, 5), "{deleted:?}");
    assert!(deleted.problem.contains("deleted"), "{}", deleted.problem);

    // A row copied in after #4, the rest moved up one: its hash is its own, its link is #4's,
    // so only the record after it shows the break.
    let inserted = tampered(
        "UPDATE audit SET seq = -seq WHERE seq >= 5;
         UPDATE audit SET seq = -seq + 1 WHERE seq < 0;
         INSERT INTO audit SELECT 5, time_unix_ms, 'mallory', role, actor_tenant, source, rpc,
             target, tenant_id, request, outcome, message, version, unrecorded, prev_hash, hash
         FROM audit WHERE seq = 6;",
        None,
    )
    .await;
    assert!(!inserted.ok, "{inserted:?}");
    assert_eq!(inserted.first_bad_seq, 5, "{inserted:?}");

    let forged_link = tampered(
        "INSERT INTO audit SELECT 11, time_unix_ms, actor, role, actor_tenant, source, rpc,
             target, tenant_id, request, outcome, message, version, unrecorded, hash, hash
         FROM audit WHERE seq = 3;",
        None,
    )
    .await;
    assert_eq!(
        (forged_link.ok, forged_link.first_bad_seq),
        (false, 11),
        "{forged_link:?}"
    );

    // Cut from the end: the chain is intact, only the anchor tells.
    let truncated = tampered("DELETE FROM audit WHERE seq >= 9", None).await;
    assert!(!truncated.ok, "{truncated:?}");
    assert_eq!(truncated.first_bad_seq, 10);
    assert!(
        truncated.problem.contains("cut from the end"),
        "{}",
        truncated.problem
    );
    assert_eq!(truncated.head.unwrap().seq, 8);

    // The whole log rewritten from #3 on, consistently: the anchor's hash no longer matches.
    let untouched = tampered("SELECT 1", None).await;
    assert!(untouched.ok, "{untouched:?}");
}

#[tokio::test]
async fn retention_prunes_from_the_start_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    make_changes(&mut c, 4).await;
    let before = verify(&mut c, None).await;
    assert_eq!(before.head.as_ref().unwrap().seq, 5);
    stop(cp, shutdown).await;

    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut cfg = config(dir.path(), loopback());
    cfg.audit_retention = Some(Duration::from_millis(10));
    let (cp, shutdown) = start(cfg).await;
    let mut c = admin(&cp).await;
    // The retention pass runs at start.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let records = loop {
        let records = audit(&mut c, ADMIN).await;
        if records.first().is_some_and(|r| r.rpc == "PruneAudit") {
            break records;
        }
        assert!(tokio::time::Instant::now() < deadline, "{records:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(records[0].seq, 6, "{records:?}");
    assert_eq!(records[0].actor, "drover");
    let v = verify(&mut c, before.head.clone()).await;
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checkpoint.as_ref().unwrap().seq, 5);
    assert_eq!(v.checkpoint.unwrap().hash, before.head.unwrap().hash);
    stop(cp, shutdown).await;

    // A checkpoint moved by hand is caught.
    let conn = rusqlite::Connection::open(dir.path().join("drover.db")).unwrap();
    conn.execute("UPDATE audit_checkpoint SET seq = 4", []).unwrap();
    drop(conn);
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    let v = verify(&mut c, None).await;
    assert!(!v.ok, "{v:?}");
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn records_deleted_from_the_start_with_the_checkpoint_moved_to_match_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    make_changes(&mut c, 5).await;
    let head = verify(&mut c, None).await.head.unwrap();
    stop(cp, shutdown).await;
    // Everything deleted, the checkpoint set to the head: an empty chain that starts there.
    let conn = rusqlite::Connection::open(dir.path().join("drover.db")).unwrap();
    conn.execute_batch(
        "UPDATE audit_checkpoint SET seq = (SELECT MAX(seq) FROM audit),
             hash = (SELECT hash FROM audit ORDER BY seq DESC LIMIT 1);
         DELETE FROM audit;",
    )
    .unwrap();
    drop(conn);
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    let v = verify(&mut c, Some(head)).await;
    assert!(!v.ok, "{v:?}");
    assert!(v.problem.contains("deleted from the start"), "{}", v.problem);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_follower_gets_each_new_record_once_and_only_its_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "other").await;
    let acme = identity(&mut c, "acme-viewer", pb::AdminRole::Viewer, "acme").await;
    let mut all = c
        .follow_audit(authed(
            pb::FollowAuditRequest {
                backlog: 2,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut mine = c
        .follow_audit(authed(pb::FollowAuditRequest::default(), &acme))
        .await
        .unwrap()
        .into_inner();
    let next = async |s: &mut tonic::Streaming<pb::AuditRecord>| {
        tokio::time::timeout(PATIENCE, s.message())
            .await
            .expect("no record came")
            .unwrap()
            .unwrap()
    };
    // The backlog: the newest two.
    assert_eq!(next(&mut all).await.target, "tenant/other");
    assert_eq!(next(&mut all).await.target, "admin/acme-viewer");
    let other_key = create_key(&mut c, ADMIN, "other").await.unwrap();
    let acme_key = create_key(&mut c, ADMIN, "acme").await.unwrap();
    assert_eq!(next(&mut all).await.target, format!("key/{other_key}"));
    assert_eq!(next(&mut all).await.target, format!("key/{acme_key}"));
    assert_eq!(next(&mut mine).await.target, format!("key/{acme_key}"));
    // Many at once, in order, none twice.
    for _ in 0..700 {
        create_key(&mut c, ADMIN, "acme").await.unwrap();
    }
    let mut last = 0;
    for _ in 0..700 {
        let r = next(&mut all).await;
        assert!(r.seq > last);
        last = r.seq;
    }
    for _ in 0..700 {
        assert_eq!(next(&mut mine).await.rpc, "CreateKey");
    }
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_control_plane_killed_in_a_burst_of_changes_keeps_chain_and_store_in_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drover.db");
    // A first start in-process creates the tenant; then the binary, killed mid-burst.
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    create_tenant(&mut c, "acme").await;
    stop(cp, shutdown).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drover-controlplane"))
        .args([
            "--db",
            db.to_str().unwrap(),
            "--grpc",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DROVER_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let client = loop {
        if let Ok(c) = AdminServiceClient::connect(url.clone()).await {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the control plane never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Eight writers create keys until the process dies under them.
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let mut created = vec![];
                while let Ok(id) = create_key(&mut c, ADMIN, "acme").await {
                    created.push(id);
                }
                created
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut acknowledged = vec![];
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(
        acknowledged.len() > 20,
        "the burst was too short: {}",
        acknowledged.len()
    );

    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    let v = verify(&mut c, None).await;
    assert!(v.ok, "{v:?}");
    let mut keys = HashMap::new();
    let mut page = String::new();
    loop {
        let answer = c
            .list_keys(authed(
                pb::ListKeysRequest {
                    page_size: 1000,
                    page_token: page.clone(),
                    ..Default::default()
                },
                ADMIN,
            ))
            .await
            .unwrap()
            .into_inner();
        for k in answer.keys {
            keys.insert(format!("key/{}", k.id), 0);
        }
        if answer.next_page_token.is_empty() {
            break;
        }
        page = answer.next_page_token;
    }
    for r in audit(&mut c, ADMIN).await {
        if r.rpc == "CreateKey" && r.outcome == "ok" {
            *keys
                .get_mut(&r.target)
                .unwrap_or_else(|| panic!("a record without its key: {r:?}")) += 1;
        }
    }
    assert!(
        keys.values().all(|n| *n == 1),
        "a key without exactly one record: {keys:?}"
    );
    for id in &acknowledged {
        assert!(
            keys.contains_key(&format!("key/{id}")),
            "an acknowledged key was lost: {id}"
        );
    }
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn retries_are_bound_to_their_caller_and_a_revoked_follower_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut c = admin(&cp).await;
    create_tenant(&mut c, "acme").await;
    let ada = identity(&mut c, "ada", pb::AdminRole::Admin, "").await;
    let bob = identity(&mut c, "bob", pb::AdminRole::Admin, "").await;
    let create = |token: &str| {
        authed(
            pb::CreateKeyRequest {
                tenant: "acme".into(),
                request_id: "retry-1".into(),
                ..Default::default()
            },
            token,
        )
    };
    let first = c.create_key(create(&ada)).await.unwrap().into_inner();
    let again = c.create_key(create(&ada)).await.unwrap().into_inner();
    assert_eq!(first.secret, again.secret, "a retry gets the first answer");
    // Another identity with the same request id never gets that answer.
    let e = c.create_key(create(&bob)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let records = audit(&mut c, ADMIN).await;
    let id = first.key.unwrap().id;
    let outcomes: Vec<_> = records
        .iter()
        .filter(|r| r.rpc == "CreateKey")
        .map(|r| (r.actor.as_str(), r.outcome.as_str(), r.target.as_str()))
        .collect();
    let target = format!("key/{id}");
    assert_eq!(
        outcomes,
        [
            ("ada", "ok", target.as_str()),
            ("ada", "unchanged", "tenant/acme"),
            ("bob", "already_exists", outcomes[2].2),
        ]
    );
    // The reserved names.
    for name in ["root", "drover"] {
        let e = c
            .create_admin(authed(
                pb::CreateAdminRequest {
                    name: name.into(),
                    role: pb::AdminRole::Viewer as i32,
                    ..Default::default()
                },
                ADMIN,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{name}: {e:?}");
    }

    // Calls that change nothing, repeated, are recorded up to the caller's budget.
    let before = audit(&mut c, ADMIN).await.len();
    for _ in 0..100 {
        c.set_module(authed(set_module("auth", false), &ada))
            .await
            .unwrap();
    }
    let records = audit(&mut c, ADMIN).await;
    let unchanged = records.len() - before;
    assert!(
        (20..=40).contains(&unchanged),
        "{unchanged} records of 100 unchanged calls"
    );
    assert!(
        records[before..]
            .iter()
            .all(|r| r.outcome == "unchanged" && r.actor == "ada")
    );

    // A follower revoked while it follows is cut off.
    let mut follower = c
        .follow_audit(authed(pb::FollowAuditRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();
    c.revoke_admin(authed(pb::RevokeAdminRequest { name: "bob".into() }, ADMIN))
        .await
        .unwrap();
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match follower.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the revoked follower was never cut off");
    assert_eq!(ended, Some(Code::Unauthenticated));
    stop(cp, shutdown).await;
}
