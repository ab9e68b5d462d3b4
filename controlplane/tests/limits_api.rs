//! Rate limits, spend caps and a tenant's on-cp-loss mode through `AdminService`, against a
//! real control plane: merge and removal semantics, refusals that name the field and change
//! nothing, the spend of a cap's current period from usage reported through `UsageService`,
//! pagination, and what the policy stream carries to data planes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::time::Duration;

use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::limit_scope::Scope;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use common::*;

const USD: i64 = 1_000_000_000;
const DAY: i64 = 86_400_000;

fn tenant_scope(name: &str) -> Option<pb::LimitScope> {
    Some(pb::LimitScope {
        scope: Some(Scope::Tenant(name.into())),
    })
}

fn key_scope(id: &str) -> Option<pb::LimitScope> {
    Some(pb::LimitScope {
        scope: Some(Scope::KeyId(id.into())),
    })
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

async fn create_tenant(client: &mut AdminServiceClient<Channel>, name: &str) {
    client
        .create_tenant(authed(
            pb::CreateTenantRequest {
                name: name.into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap();
}

/// Creates a key of `tenant` and returns its id.
async fn create_key(client: &mut AdminServiceClient<Channel>, tenant: &str) -> String {
    client
        .create_key(authed(
            pb::CreateKeyRequest {
                tenant: tenant.into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
        .id
}

fn set_limit(
    scope: Option<pb::LimitScope>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    concurrency: Option<u32>,
) -> pb::SetLimitRequest {
    pb::SetLimitRequest {
        scope,
        rpm,
        tpm,
        concurrency,
    }
}

fn set_cap(scope: Option<pb::LimitScope>, period: pb::CapPeriod, limit_nano_usd: i64) -> pb::SetCapRequest {
    pb::SetCapRequest {
        scope,
        period: period.into(),
        limit_nano_usd,
        soft_at: 0.0,
        allow_unpriced: false,
    }
}

/// Every limit, through the pages of `page_size`.
async fn all_limits(
    client: &mut AdminServiceClient<Channel>,
    tenant: &str,
    page_size: u32,
) -> Vec<pb::LimitInfo> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_limits(authed(
                pb::ListLimitsRequest {
                    tenant: tenant.into(),
                    page_size,
                    page_token,
                },
                ADMIN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.limits.len() <= page_size as usize);
        out.extend(page.limits);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

async fn all_caps(
    client: &mut AdminServiceClient<Channel>,
    tenant: &str,
    page_size: u32,
) -> Vec<pb::CapInfo> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_caps(authed(
                pb::ListCapsRequest {
                    tenant: tenant.into(),
                    page_size,
                    page_token,
                },
                ADMIN,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.caps.len() <= page_size as usize);
        out.extend(page.caps);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// `tenant` or `tenant/key`, and the limits, for comparing listings.
fn limit_row(l: &pb::LimitInfo) -> (String, u64, u64, u32) {
    let who = match l.scope.as_ref().and_then(|s| s.scope.as_ref()) {
        Some(Scope::Tenant(t)) => t.clone(),
        Some(Scope::KeyId(k)) => format!("{}/{k}", l.tenant),
        None => panic!("a limit without a scope: {l:?}"),
    };
    (who, l.rpm, l.tpm, l.concurrency)
}

#[tokio::test]
async fn limits_are_merged_listed_and_removed_and_no_op_changes_keep_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    create_tenant(&mut client, "acme").await;
    create_tenant(&mut client, "beta").await;
    let key = create_key(&mut client, "acme").await;
    let v0 = version(&mut client).await;

    let set = client
        .set_limit(authed(
            set_limit(tenant_scope("acme"), Some(600), None, None),
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.version, v0 + 1);
    let limit = set.limit.unwrap();
    assert_eq!((limit.rpm, limit.tpm, limit.concurrency), (600, 0, 0));
    assert_eq!(limit.scope, tenant_scope("acme"));
    // Another kind merges in; rpm stays.
    let merged = client
        .set_limit(authed(
            set_limit(tenant_scope("acme"), None, Some(90_000), Some(8)),
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.version, v0 + 2);
    let limit = merged.limit.unwrap();
    assert_eq!((limit.rpm, limit.tpm, limit.concurrency), (600, 90_000, 8));
    // The same values again: nothing changes, not even the version.
    let again = client
        .set_limit(authed(
            set_limit(tenant_scope("acme"), Some(600), Some(90_000), None),
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, v0 + 2);
    assert_eq!(version(&mut client).await, v0 + 2);

    client
        .set_limit(authed(set_limit(key_scope(&key), Some(60), None, None), ADMIN))
        .await
        .unwrap();
    let key_limit = client
        .set_limit(authed(
            set_limit(key_scope(&key), None, None, Some(1_000_000)),
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .limit
        .unwrap();
    assert_eq!(key_limit.tenant, "acme", "a key's limit names its tenant");
    assert_eq!((key_limit.rpm, key_limit.concurrency), (60, 1_000_000));
    client
        .set_limit(authed(
            set_limit(tenant_scope("beta"), Some(1_000_000_000_000), None, None),
            ADMIN,
        ))
        .await
        .unwrap();

    let listed: Vec<_> = all_limits(&mut client, "", 100)
        .await
        .iter()
        .map(limit_row)
        .collect();
    assert_eq!(
        listed,
        [
            ("acme".to_owned(), 600, 90_000, 8),
            (format!("acme/{key}"), 60, 0, 1_000_000),
            ("beta".to_owned(), 1_000_000_000_000, 0, 0),
        ]
    );
    let of_beta: Vec<_> = all_limits(&mut client, "beta", 100)
        .await
        .iter()
        .map(limit_row)
        .collect();
    assert_eq!(of_beta, [("beta".to_owned(), 1_000_000_000_000, 0, 0)]);
    let unknown = client
        .list_limits(authed(
            pb::ListLimitsRequest {
                tenant: "ghost".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("ghost"), "{unknown:?}");

    // Removing one kind, then the rest (no kind given: all), then nothing is left to remove.
    let v = version(&mut client).await;
    let remove = |rpm, tpm, concurrency| pb::RemoveLimitRequest {
        scope: tenant_scope("acme"),
        rpm,
        tpm,
        concurrency,
    };
    let removed = client
        .remove_limit(authed(remove(false, true, false), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.version, v + 1);
    assert_eq!(limit_row(&all_limits(&mut client, "acme", 100).await[0]).1, 600);
    assert_eq!(all_limits(&mut client, "acme", 100).await[0].tpm, 0);
    let removed = client
        .remove_limit(authed(remove(false, false, false), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.version, v + 2);
    let left: Vec<_> = all_limits(&mut client, "acme", 100)
        .await
        .iter()
        .map(limit_row)
        .collect();
    assert_eq!(left, [(format!("acme/{key}"), 60, 0, 1_000_000)]);
    let nothing = client
        .remove_limit(authed(remove(true, false, false), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.version, v + 2);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn bad_limit_and_cap_requests_name_the_field_or_the_missing_owner_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    create_tenant(&mut client, "acme").await;
    create_tenant(&mut client, "gone").await;
    let key = create_key(&mut client, "acme").await;
    let revoked = create_key(&mut client, "acme").await;
    client
        .set_limit(authed(
            set_limit(tenant_scope("acme"), Some(5), None, None),
            ADMIN,
        ))
        .await
        .unwrap();
    client
        .set_cap(authed(set_cap(key_scope(&key), pb::CapPeriod::Day, USD), ADMIN))
        .await
        .unwrap();
    client
        .set_limit(authed(set_limit(key_scope(&revoked), Some(5), None, None), ADMIN))
        .await
        .unwrap();
    client
        .revoke_key(authed(pb::RevokeKeyRequest { id: revoked.clone() }, ADMIN))
        .await
        .unwrap();
    client
        .delete_tenant(authed(
            pb::DeleteTenantRequest {
                name: "gone".into(),
                force: false,
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let before = version(&mut client).await;
    let limits_before = all_limits(&mut client, "", 100).await;
    let caps_before = all_caps(&mut client, "", 100).await;

    let acme = || tenant_scope("acme");
    let limit_cases = [
        (set_limit(acme(), Some(0), None, None), "rpm"),
        (set_limit(acme(), None, Some(0), None), "tpm"),
        (set_limit(acme(), None, None, Some(0)), "concurrency"),
        (set_limit(acme(), Some(1_000_000_000_001), None, None), "rpm"),
        (set_limit(acme(), None, None, Some(1_000_001)), "concurrency"),
        (set_limit(acme(), None, None, None), "rpm"),
        (set_limit(None, Some(5), None, None), "scope"),
        (
            set_limit(tenant_scope("Acme Corp"), Some(5), None, None),
            "scope.tenant",
        ),
        (
            set_limit(key_scope("sk-123"), Some(5), None, None),
            "scope.key_id",
        ),
    ];
    for (request, field) in limit_cases {
        let err = client
            .set_limit(authed(request.clone(), ADMIN))
            .await
            .unwrap_err();
        assert_eq!(violated_field(&err), field, "{request:?}: {err:?}");
    }
    let none = client
        .set_limit(authed(set_limit(acme(), None, None, None), ADMIN))
        .await
        .unwrap_err();
    assert!(none.message().contains("no limit given"), "{none:?}");

    let cap = |period: i32, limit_nano_usd: i64, soft_at: f64| pb::SetCapRequest {
        scope: acme(),
        period,
        limit_nano_usd,
        soft_at,
        allow_unpriced: false,
    };
    let day = pb::CapPeriod::Day as i32;
    let cap_cases = [
        (cap(0, USD, 0.0), "period"),
        (cap(7, USD, 0.0), "period"),
        (cap(day, 0, 0.0), "limit_nano_usd"),
        (cap(day, -5 * USD, 0.0), "limit_nano_usd"),
        (cap(day, 1_000_000 * USD + 1, 0.0), "limit_nano_usd"),
        (cap(day, USD, 1.0), "soft_at"),
        (cap(day, USD, 1.5), "soft_at"),
        (cap(day, USD, -0.5), "soft_at"),
        (cap(day, USD, f64::NAN), "soft_at"),
        (
            pb::SetCapRequest {
                scope: None,
                ..cap(day, USD, 0.0)
            },
            "scope",
        ),
    ];
    for (request, field) in cap_cases {
        let err = client.set_cap(authed(request.clone(), ADMIN)).await.unwrap_err();
        assert_eq!(violated_field(&err), field, "{request:?}: {err:?}");
    }
    let err = client
        .remove_cap(authed(
            pb::RemoveCapRequest {
                scope: acme(),
                period: 9,
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err), "period");
    let err = client
        .list_caps(authed(
            pb::ListCapsRequest {
                page_size: 5_000,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err), "page_size");
    let err = client
        .list_limits(authed(
            pb::ListLimitsRequest {
                tenant: "Not A Name".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err), "tenant");

    // Owners that do not exist, or no longer: NOT_FOUND, naming them.
    let unknown_key = "key_0000000000000000";
    let not_found = [
        (
            client
                .set_limit(authed(
                    set_limit(tenant_scope("ghost"), Some(5), None, None),
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            "ghost",
        ),
        (
            client
                .set_limit(authed(
                    set_limit(key_scope(unknown_key), Some(5), None, None),
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            unknown_key,
        ),
        (
            client
                .set_limit(authed(set_limit(key_scope(&revoked), Some(9), None, None), ADMIN))
                .await
                .unwrap_err(),
            revoked.as_str(),
        ),
        (
            client
                .set_cap(authed(
                    set_cap(tenant_scope("gone"), pb::CapPeriod::Day, USD),
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            "gone",
        ),
        (
            client
                .set_cap(authed(
                    set_cap(key_scope(&revoked), pb::CapPeriod::Total, USD),
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            revoked.as_str(),
        ),
        (
            client
                .remove_limit(authed(
                    pb::RemoveLimitRequest {
                        scope: key_scope(&revoked),
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            revoked.as_str(),
        ),
        (
            client
                .remove_cap(authed(
                    pb::RemoveCapRequest {
                        scope: tenant_scope("gone"),
                        period: 0,
                    },
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            "gone",
        ),
        (
            client
                .list_caps(authed(
                    pb::ListCapsRequest {
                        tenant: "gone".into(),
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .unwrap_err(),
            "gone",
        ),
    ];
    for (err, named) in not_found {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains(named), "{named}: {err:?}");
    }

    assert_eq!(version(&mut client).await, before, "nothing changed");
    assert_eq!(all_limits(&mut client, "", 100).await, limits_before);
    assert_eq!(all_caps(&mut client, "", 100).await, caps_before);
    // The revoked key's limit went with it.
    assert!(
        limits_before.iter().all(|l| l.scope != key_scope(&revoked)),
        "{limits_before:?}"
    );

    // The edges of a soft cap inside (0, 1) are accepted.
    for soft_at in [1e-9, 0.5, 0.999_999] {
        let set = client
            .set_cap(authed(cap(day, USD, soft_at), ADMIN))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(set.cap.unwrap().soft_at, soft_at);
    }
    stop(cp, shutdown).await;
}

fn usage(id: &str, time_unix_ms: i64, tenant: &str, key_id: &str, cost_nano_usd: i64) -> pb::UsageRecord {
    pb::UsageRecord {
        request_id: id.into(),
        time_unix_ms,
        tenant: tenant.into(),
        key_id: key_id.into(),
        alias: "m".into(),
        provider: "p".into(),
        model: "m".into(),
        cost_nano_usd,
        status: 200,
        endpoint: "/v1/chat/completions".into(),
        ..Default::default()
    }
}

/// Now, Unix milliseconds, at least 10 s away from a UTC midnight (so that records of the last
/// seconds and the listing after them fall on the same day).
async fn now_inside_a_day() -> i64 {
    let now = drover_proto::model::now_unix_ms();
    let into_day = now % DAY;
    if into_day < 10_000 || DAY - into_day < 10_000 {
        tokio::time::sleep(Duration::from_secs(21)).await;
    }
    drover_proto::model::now_unix_ms()
}

fn find_cap<'a>(
    caps: &'a [pb::CapInfo],
    scope: &Option<pb::LimitScope>,
    period: pb::CapPeriod,
) -> &'a pb::CapInfo {
    caps.iter()
        .find(|c| &c.scope == scope && c.period == period as i32)
        .unwrap_or_else(|| panic!("no {period:?} cap of {scope:?} in {caps:?}"))
}

#[tokio::test]
async fn caps_show_what_the_ledger_settled_in_their_current_period() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    create_tenant(&mut client, "acme").await;
    create_tenant(&mut client, "other").await;
    let key = create_key(&mut client, "acme").await;
    let second = create_key(&mut client, "acme").await;
    let stranger = create_key(&mut client, "other").await;
    let now = now_inside_a_day().await;

    let mut usage_client = UsageServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap();
    let records = vec![
        usage("r1", now - 1_000, "acme", &key, 300_000_000),
        usage("r2", now - 900, "acme", &key, 200_000_000),
        usage("r3", now - 800, "acme", &second, 100_000_000),
        usage("r4", now - 40 * DAY, "acme", &key, USD),
        usage("r5", now - 700, "other", &stranger, 7 * USD),
    ];
    usage_client
        .report(authed(
            pb::UsageBatch {
                dataplane_id: "dp-1".into(),
                records,
            },
            DATAPLANE,
        ))
        .await
        .unwrap();

    let tenant_day = client
        .set_cap(authed(
            pb::SetCapRequest {
                soft_at: 0.8,
                ..set_cap(tenant_scope("acme"), pb::CapPeriod::Day, 10 * USD)
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .cap
        .unwrap();
    assert_eq!(
        (tenant_day.spent_nano_usd, tenant_day.remaining_nano_usd),
        (600_000_000, 9_400_000_000),
        "SetCap answers with the spend too"
    );
    client
        .set_cap(authed(
            set_cap(tenant_scope("acme"), pb::CapPeriod::Total, 5 * USD),
            ADMIN,
        ))
        .await
        .unwrap();
    client
        .set_cap(authed(
            pb::SetCapRequest {
                allow_unpriced: true,
                ..set_cap(key_scope(&key), pb::CapPeriod::Month, 400_000_000)
            },
            ADMIN,
        ))
        .await
        .unwrap();

    let caps = all_caps(&mut client, "acme", 100).await;
    assert_eq!(caps.len(), 3);
    let day = find_cap(&caps, &tenant_scope("acme"), pb::CapPeriod::Day);
    assert_eq!(
        (day.spent_nano_usd, day.remaining_nano_usd),
        (600_000_000, 9_400_000_000)
    );
    assert_eq!(day.soft_at, 0.8);
    assert_eq!(day.period_end_unix_ms - day.period_start_unix_ms, DAY);
    assert!(day.period_start_unix_ms <= now && now < day.period_end_unix_ms);
    assert_eq!(day.period_start_unix_ms % DAY, 0, "a UTC midnight");
    let total = find_cap(&caps, &tenant_scope("acme"), pb::CapPeriod::Total);
    assert_eq!(
        (total.spent_nano_usd, total.remaining_nano_usd),
        (1_600_000_000, 3_400_000_000)
    );
    assert_eq!((total.period_start_unix_ms, total.period_end_unix_ms), (0, 0));
    let month = find_cap(&caps, &key_scope(&key), pb::CapPeriod::Month);
    assert_eq!(month.tenant, "acme");
    assert!(month.allow_unpriced);
    assert_eq!(
        (month.spent_nano_usd, month.remaining_nano_usd),
        (500_000_000, 0),
        "overspent: nothing remains, never less"
    );
    assert!(month.period_start_unix_ms <= now && now < month.period_end_unix_ms);

    // A tenant deleted and created again under its name continues its spend.
    client
        .delete_tenant(authed(
            pb::DeleteTenantRequest {
                name: "acme".into(),
                force: true,
            },
            ADMIN,
        ))
        .await
        .unwrap();
    assert!(
        all_caps(&mut client, "", 100).await.is_empty(),
        "its caps went with it"
    );
    create_tenant(&mut client, "acme").await;
    client
        .set_cap(authed(
            set_cap(tenant_scope("acme"), pb::CapPeriod::Day, USD),
            ADMIN,
        ))
        .await
        .unwrap();
    let caps = all_caps(&mut client, "", 100).await;
    assert_eq!(caps.len(), 1);
    assert_eq!(
        (caps[0].spent_nano_usd, caps[0].remaining_nano_usd),
        (600_000_000, 400_000_000)
    );
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn limits_and_caps_page_through_by_tenant_key_and_period() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut expected_limits = Vec::new();
    let mut expected_caps = Vec::new();
    // Names whose order a naive concatenation would get wrong: "a" < "a-b" < "ab".
    for name in ["ab", "a", "a-b"] {
        create_tenant(&mut client, name).await;
        let mut keys = vec![
            create_key(&mut client, name).await,
            create_key(&mut client, name).await,
        ];
        keys.sort();
        client
            .set_limit(authed(set_limit(tenant_scope(name), Some(1), None, None), ADMIN))
            .await
            .unwrap();
        for period in [pb::CapPeriod::Total, pb::CapPeriod::Day] {
            client
                .set_cap(authed(set_cap(tenant_scope(name), period, USD), ADMIN))
                .await
                .unwrap();
        }
        let mut of_tenant_limits = vec![name.to_owned()];
        let mut of_tenant_caps = vec![(name.to_owned(), 1), (name.to_owned(), 3)];
        for k in &keys {
            client
                .set_limit(authed(set_limit(key_scope(k), None, Some(2), None), ADMIN))
                .await
                .unwrap();
            client
                .set_cap(authed(set_cap(key_scope(k), pb::CapPeriod::Month, USD), ADMIN))
                .await
                .unwrap();
            of_tenant_limits.push(format!("{name}/{k}"));
            of_tenant_caps.push((format!("{name}/{k}"), 2));
        }
        expected_limits.push((name.to_owned(), of_tenant_limits));
        expected_caps.push((name.to_owned(), of_tenant_caps));
    }
    expected_limits.sort();
    expected_caps.sort();
    let expected_limits: Vec<String> = expected_limits.into_iter().flat_map(|(_, v)| v).collect();
    let expected_caps: Vec<(String, i32)> = expected_caps.into_iter().flat_map(|(_, v)| v).collect();

    for page_size in [1, 2, 4, 1_000] {
        let limits: Vec<String> = all_limits(&mut client, "", page_size)
            .await
            .iter()
            .map(|l| limit_row(l).0)
            .collect();
        assert_eq!(limits, expected_limits, "page size {page_size}");
        let caps: Vec<(String, i32)> = all_caps(&mut client, "", page_size)
            .await
            .iter()
            .map(|c| {
                let who = match c.scope.as_ref().and_then(|s| s.scope.as_ref()) {
                    Some(Scope::KeyId(k)) => format!("{}/{k}", c.tenant),
                    _ => c.tenant.clone(),
                };
                (who, c.period)
            })
            .collect();
        assert_eq!(caps, expected_caps, "page size {page_size}");
    }
    let of_a = all_caps(&mut client, "a", 2).await;
    assert_eq!(of_a.len(), 4);
    assert!(of_a.iter().all(|c| c.tenant == "a"));

    // A token is only good for the filters it was made with.
    let first = client
        .list_limits(authed(
            pb::ListLimitsRequest {
                page_size: 1,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let err = client
        .list_limits(authed(
            pb::ListLimitsRequest {
                tenant: "a".into(),
                page_size: 1,
                page_token: first.next_page_token.clone(),
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&err), "page_token");
    let err = client
        .list_caps(authed(
            pb::ListCapsRequest {
                page_size: 1,
                page_token: first.next_page_token,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_field(&err),
        "page_token",
        "a limits token is no caps token"
    );
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn the_policy_stream_carries_limits_caps_and_fail_closed_one_version_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    let first = watcher.next().await;
    let mut v = first.version;

    let created = client
        .create_tenant(authed(
            pb::CreateTenantRequest {
                name: "strict".into(),
                on_cp_loss: pb::OnCpLoss::Closed.into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.tenant.unwrap().on_cp_loss, pb::OnCpLoss::Closed as i32);
    let delta = watcher.next().await;
    assert_eq!((delta.version, delta.base_version), (v + 1, v));
    assert!(delta.tenants[0].fail_closed);
    assert_eq!(delta.tenants[0].limits, None);
    v += 1;
    let key = create_key(&mut client, "strict").await;
    assert_eq!(watcher.next().await.version, v + 1);
    v += 1;

    client
        .set_limit(authed(
            set_limit(tenant_scope("strict"), Some(100), None, Some(3)),
            ADMIN,
        ))
        .await
        .unwrap();
    let delta = watcher.next().await;
    assert_eq!(delta.version, v + 1, "one change, one version");
    assert!(delta.config_unchanged && delta.keys.is_empty());
    let tenant = &delta.tenants[0];
    assert!(tenant.fail_closed);
    let limits = tenant.limits.unwrap();
    assert_eq!((limits.rpm, limits.tpm, limits.concurrency), (100, 0, 3));
    v += 1;

    client
        .set_cap(authed(
            pb::SetCapRequest {
                soft_at: 0.9,
                ..set_cap(key_scope(&key), pb::CapPeriod::Month, 3 * USD)
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let delta = watcher.next().await;
    assert_eq!(delta.version, v + 1);
    assert!(delta.tenants.is_empty());
    assert_eq!(delta.keys[0].id, key);
    assert_eq!(
        delta.keys[0].caps,
        [pb::Cap {
            period: pb::CapPeriod::Month.into(),
            limit_nano_usd: 3 * USD,
            soft_at: 0.9,
            allow_unpriced: false,
        }]
    );
    v += 1;

    // The mode changes alone; the tenant comes again with its limits.
    let updated = client
        .update_tenant(authed(
            pb::UpdateTenantRequest {
                name: "strict".into(),
                on_cp_loss: pb::OnCpLoss::Open.into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, v + 1);
    let tenant = updated.tenant.unwrap();
    assert_eq!(
        (tenant.on_cp_loss, tenant.state),
        (pb::OnCpLoss::Open as i32, pb::TenantState::Active as i32)
    );
    let delta = watcher.next().await;
    assert_eq!(delta.version, v + 1);
    assert!(!delta.tenants[0].fail_closed);
    assert_eq!(delta.tenants[0].limits.unwrap().rpm, 100);
    v += 1;
    let bad = client
        .update_tenant(authed(
            pb::UpdateTenantRequest {
                name: "strict".into(),
                on_cp_loss: 7,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&bad), "on_cp_loss");
    let bad = client
        .create_tenant(authed(
            pb::CreateTenantRequest {
                name: "other".into(),
                on_cp_loss: -1,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_field(&bad), "on_cp_loss");

    // A fresh data plane gets all of it in its complete snapshot.
    let mut fresh = Watcher::open(&cp, DATAPLANE, "dp-2", None).await;
    let full = fresh.next().await;
    assert_eq!((full.version, full.base_version), (v, 0));
    assert_eq!(full.tenants[0].limits.unwrap().concurrency, 3);
    assert_eq!(full.keys[0].caps.len(), 1);
    assert_eq!(version(&mut client).await, v, "refusals bumped nothing");
    stop(cp, shutdown).await;
}
