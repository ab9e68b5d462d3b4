//! Usage end to end: batches applied exactly once (across restarts too), the admin API's usage
//! queries, and retention compacting old records while keeping the totals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_controlplane::{Config, ControlPlane};
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

use common::*;

/// 2026-11-01T00:00Z.
const NOV_1: i64 = 1_793_491_200_000;
const DAY: i64 = 86_400_000;

async fn usage_client(cp: &ControlPlane) -> UsageServiceClient<Channel> {
    UsageServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap()
}

fn usage(id: &str, time_unix_ms: i64, tenant: &str, model: &str, cost_nano_usd: i64) -> pb::UsageRecord {
    pb::UsageRecord {
        request_id: id.into(),
        time_unix_ms,
        tenant: tenant.into(),
        key_id: format!("{tenant}-key"),
        alias: "fast".into(),
        provider: "openai".into(),
        model: model.into(),
        input_tokens: 1000,
        output_tokens: 100,
        cached_input_tokens: 200,
        cost_nano_usd,
        status: 200,
        ..Default::default()
    }
}

fn batch(records: Vec<pb::UsageRecord>) -> pb::UsageBatch {
    pb::UsageBatch {
        dataplane_id: "dp-1".into(),
        records,
    }
}

async fn report(client: &mut UsageServiceClient<Channel>, records: Vec<pb::UsageRecord>) -> pb::UsageAck {
    client
        .report(authed(batch(records), DATAPLANE))
        .await
        .unwrap()
        .into_inner()
}

fn query(group_by: pb::UsageGroupBy) -> pb::UsageQuery {
    pb::UsageQuery {
        group_by: group_by as i32,
        ..Default::default()
    }
}

async fn usage_report(client: &mut AdminServiceClient<Channel>, q: pb::UsageQuery) -> pb::UsageReport {
    client.query_usage(authed(q, ADMIN)).await.unwrap().into_inner()
}

async fn total(client: &mut AdminServiceClient<Channel>) -> pb::UsageRow {
    usage_report(client, query(pb::UsageGroupBy::Unspecified))
        .await
        .total
        .unwrap()
}

/// Now, Unix milliseconds, read as the control plane reads it.
fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tokio::test]
async fn usage_is_applied_exactly_once_and_an_invalid_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut admin_api = admin(&cp).await;
    let mut client = usage_client(&cp).await;
    let records: Vec<_> = (0..50)
        .map(|i| {
            usage(
                &format!("req-{i}"),
                NOV_1 + i * 1000,
                "acme",
                "gpt-4o",
                3_300_000 + i,
            )
        })
        .collect();
    let ack = report(&mut client, records.clone()).await;
    assert_eq!((ack.applied, ack.duplicates), (50, 0));
    let first = total(&mut admin_api).await;
    let cost: i64 = records.iter().map(|r| r.cost_nano_usd).sum();
    assert_eq!(
        (first.requests, first.input_tokens, first.cost_nano_usd),
        (50, 50_000, cost)
    );

    // A resend after a lost answer: all duplicates, totals unchanged.
    let ack = report(&mut client, records.clone()).await;
    assert_eq!((ack.applied, ack.duplicates), (0, 50));
    assert_eq!(total(&mut admin_api).await, first);

    // One invalid record refuses the whole batch; its valid records are not written.
    let mut bad = vec![
        usage("new-1", NOV_1, "acme", "gpt-4o", 1),
        usage("new-2", NOV_1, "acme", "gpt-4o", 1),
    ];
    bad[1].cost_nano_usd = -5;
    let err = client.report(authed(batch(bad), DATAPLANE)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("records[1]"), "{}", err.message());
    let too_many: Vec<_> = (0..=drover_proto::limits::MAX_USAGE_BATCH)
        .map(|i| usage(&format!("big-{i}"), NOV_1, "acme", "gpt-4o", 1))
        .collect();
    let err = client
        .report(authed(batch(too_many), DATAPLANE))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(total(&mut admin_api).await, first);

    // The data plane token or the admin token; nothing else.
    let ack = client
        .report(authed(batch(vec![usage("by-admin", NOV_1, "", "m", 0)]), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.applied, 1);
    for request in [
        Request::new(batch(vec![usage("anon", NOV_1, "", "m", 0)])),
        authed(batch(vec![usage("anon", NOV_1, "", "m", 0)]), "wrong"),
    ] {
        let err = client.report(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = admin_api
        .query_usage(authed(query(pb::UsageGroupBy::Model), DATAPLANE))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "usage is read with the admin token only"
    );
    assert_eq!(total(&mut admin_api).await.requests, 51);

    // After a restart the ledger still knows what it applied.
    let addr = cp.grpc_addr();
    stop(cp, shutdown).await;
    let (cp, shutdown) = start(config(dir.path(), addr)).await;
    let mut client = usage_client(&cp).await;
    let ack = report(&mut client, records).await;
    assert_eq!((ack.applied, ack.duplicates), (0, 50));
    assert_eq!(total(&mut admin(&cp).await).await.requests, 51);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn usage_queries_group_filter_and_refuse_bad_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut admin_api = admin(&cp).await;
    let mut client = usage_client(&cp).await;
    let mut records = vec![
        usage("a", NOV_1 + 10, "acme", "gpt-4o", 1_000_000_001),
        usage("b", NOV_1 + DAY + 10, "acme", "gpt-4o-mini", 2),
        usage("c", NOV_1 + DAY + 20, "globex", "gpt-4o", 3),
        usage("d", NOV_1 + 2 * DAY, "globex", "claude-haiku-4-5", 4),
    ];
    records[3].provider = "anthropic".into();
    records[2].cache_hit = true;
    records[2].saved_nano_usd = 77;
    records[1].failed = true;
    records[1].status = 502;
    records[0].unpriced = true;
    report(&mut client, records).await;

    let groups = |r: &pb::UsageReport| -> Vec<(String, u64, i64)> {
        r.rows
            .iter()
            .map(|row| (row.group.clone(), row.requests, row.cost_nano_usd))
            .collect()
    };
    let by_model = usage_report(&mut admin_api, query(pb::UsageGroupBy::Model)).await;
    assert_eq!(
        groups(&by_model),
        [
            ("claude-haiku-4-5".to_owned(), 1, 4),
            ("gpt-4o".to_owned(), 2, 1_000_000_004),
            ("gpt-4o-mini".to_owned(), 1, 2),
        ]
    );
    let all = by_model.total.unwrap();
    assert_eq!(
        (
            all.requests,
            all.cost_nano_usd,
            all.cache_hits,
            all.saved_nano_usd,
            all.failed,
            all.unpriced
        ),
        (4, 1_000_000_010, 1, 77, 1, 1)
    );
    assert_eq!(all.group, "");
    let by_day = usage_report(&mut admin_api, query(pb::UsageGroupBy::Day)).await;
    assert_eq!(
        groups(&by_day),
        [
            ("2026-11-01".to_owned(), 1, 1_000_000_001),
            ("2026-11-02".to_owned(), 2, 5),
            ("2026-11-03".to_owned(), 1, 4),
        ]
    );
    let by_tenant = usage_report(&mut admin_api, query(pb::UsageGroupBy::Tenant)).await;
    assert_eq!(groups(&by_tenant).len(), 2);
    let by_key = usage_report(&mut admin_api, query(pb::UsageGroupBy::Key)).await;
    assert_eq!(by_key.rows[0].group, "acme-key");
    let by_provider = usage_report(&mut admin_api, query(pb::UsageGroupBy::Provider)).await;
    assert_eq!(
        groups(&by_provider),
        [
            ("anthropic".to_owned(), 1, 4),
            ("openai".to_owned(), 3, 1_000_000_006)
        ]
    );
    // Ungrouped: one row, the total.
    let plain = usage_report(&mut admin_api, query(pb::UsageGroupBy::Unspecified)).await;
    assert_eq!(plain.rows, vec![plain.total.clone().unwrap()]);

    // Filters and a half-open range to the millisecond.
    let filtered = usage_report(
        &mut admin_api,
        pb::UsageQuery {
            tenant: "globex".into(),
            model: "gpt-4o".into(),
            since_unix_ms: NOV_1 + DAY + 20,
            until_unix_ms: NOV_1 + 2 * DAY,
            group_by: pb::UsageGroupBy::Key as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(groups(&filtered), [("globex-key".to_owned(), 1, 3)]);
    let edge = usage_report(
        &mut admin_api,
        pb::UsageQuery {
            since_unix_ms: NOV_1 + DAY + 11,
            until_unix_ms: NOV_1 + 2 * DAY,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        edge.total.unwrap().requests,
        1,
        "b at +10 is before since, c at +20 after"
    );
    let nothing = usage_report(
        &mut admin_api,
        pb::UsageQuery {
            key_id: "nobody".into(),
            group_by: pb::UsageGroupBy::Model as i32,
            ..Default::default()
        },
    )
    .await;
    assert!(nothing.rows.is_empty());
    assert_eq!(nothing.total.unwrap().requests, 0);

    for (q, want) in [
        (
            pb::UsageQuery {
                since_unix_ms: 10,
                until_unix_ms: 10,
                ..Default::default()
            },
            "must be after",
        ),
        (
            pb::UsageQuery {
                since_unix_ms: -1,
                ..Default::default()
            },
            "must not be negative",
        ),
        (
            pb::UsageQuery {
                group_by: 42,
                ..Default::default()
            },
            "unknown grouping",
        ),
    ] {
        let err = admin_api.query_usage(authed(q, ADMIN)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(want), "{}", err.message());
    }
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn retention_compacts_old_records_at_start_keeping_totals_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), loopback());
    cfg.usage_retention = Some(Duration::from_secs(24 * 3600));
    let (cp, shutdown) = start(cfg.clone()).await;
    let now = now_unix_ms();
    let old: Vec<_> = (0..30)
        .map(|i| {
            usage(
                &format!("old-{i}"),
                now - 10 * DAY + i,
                "acme",
                "gpt-4o",
                1_000 + i,
            )
        })
        .collect();
    let fresh: Vec<_> = (0..5)
        .map(|i| usage(&format!("new-{i}"), now - i, "acme", "gpt-4o", 7))
        .collect();
    let mut client = usage_client(&cp).await;
    report(&mut client, old.clone()).await;
    report(&mut client, fresh.clone()).await;
    let mut admin_client = admin(&cp).await;
    let by_day = query(pb::UsageGroupBy::Day);
    let before = usage_report(&mut admin_client, by_day.clone()).await;
    assert_eq!(before.total.as_ref().unwrap().requests, 35);
    let addr = cp.grpc_addr();
    stop(cp, shutdown).await;

    // The retention pass runs at start: the old raw rows go, the totals stay.
    let (cp, shutdown) = start(Config {
        grpc_addr: addr,
        ..cfg
    })
    .await;
    let raw_before_cutoff = || {
        let conn = rusqlite::Connection::open(dir.path().join("drover.db")).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM usage WHERE time_unix_ms < ?1",
            [now - 2 * DAY],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while raw_before_cutoff() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old records were never compacted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin_client = admin(&cp).await;
    assert_eq!(usage_report(&mut admin_client, by_day.clone()).await, before);

    let mut client = usage_client(&cp).await;
    let ack = report(&mut client, old).await;
    assert_eq!(
        (ack.applied, ack.duplicates),
        (0, 30),
        "compacted records are still known"
    );
    assert_eq!(usage_report(&mut admin_client, by_day).await, before);
    stop(cp, shutdown).await;
}
