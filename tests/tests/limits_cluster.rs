//! Rate limits and spend caps across data planes (docs/limits-and-caps.md): three data planes on
//! one control plane, clients spread over them, and the bounds the leases promise. Windows are
//! two seconds here (`--limit-window`), so a "per minute" limit counts per two seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::pb;
use drover_tests::gateway::{LeaseTimes, Scope};
use drover_tests::{Gateway, MockProvider};
use tokio::time::Instant;

const WINDOW_MS: u64 = 2_000;
const TIMES: LeaseTimes = LeaseTimes {
    ttl_ms: 1_500,
    heartbeat_ms: 300,
    window_ms: WINDOW_MS,
};

/// A cluster of `n` data planes with the `auth` and limit modules on, a route `m` to the mock
/// priced at 1 USD (input) and 2 USD (output) per million tokens, tenant `acme` and one key.
async fn cluster(up: &MockProvider, n: usize, closed: bool) -> (Gateway, pb::KeyWithSecretResponse) {
    // A generous lease wait: on a busy machine a grant may take a while, and a request that
    // stopped waiting would fail open (and count against no limit).
    let gw = Gateway::builder()
        .dataplanes(n)
        .lease_times(TIMES)
        .configure(|c| c.proxy.lease_wait = Duration::from_secs(2))
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/gpt-x"]).await;
    gw.price("gpt-x", 1.0, 2.0).await;
    gw.tenant_on_cp_loss("acme", closed).await;
    let key = gw.key("acme", &[]).await;
    for module in ["auth", "rate_limit", "spend_cap"] {
        gw.module(module, true).await;
    }
    (gw, key)
}

fn body(stream: bool) -> String {
    serde_json::json!({
        "model": "m",
        "max_tokens": 20,
        "stream": stream,
        "messages": [{"role": "user", "content": "how many requests fit in a window?"}],
    })
    .to_string()
}

/// What a load run saw.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    limited: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    fn get(&self) -> (u64, u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// `clients` callers with `secret`, each on the data plane `i % planes`, a stream every third
/// request, until `until`. A caller that is refused waits a little before trying again.
async fn hammer(gw: &Gateway, secret: &str, bases: &[String], clients: usize, until: Instant) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let auth = format!("Bearer {secret}");
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (gw_http, base, auth, counts) = (
            gw.clone_client(),
            bases[c % bases.len()].clone(),
            auth.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let reply = gw_http
                    .send_to(
                        &base,
                        "POST",
                        "/v1/chat/completions",
                        &[("authorization", &auth)],
                        body(n.is_multiple_of(3)),
                    )
                    .await;
                match reply.status.as_u16() {
                    200 => counts.ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        // A total spend cap never resets: no retry-after. Everything else has one.
                        let total_cap = reply.text().contains("USD in total");
                        assert_eq!(reply.header("retry-after").is_some(), !total_cap, "{reply:?}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        counts.limited.fetch_add(1, Ordering::Relaxed)
                    }
                    503 => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        counts.unavailable.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => counts.other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    counts
}

/// Sleeps until the start of the next rate window, and returns it.
async fn next_window() -> Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let wait = WINDOW_MS - now % WINDOW_MS;
    tokio::time::sleep(Duration::from_millis(wait + 5)).await;
    Instant::now() - Duration::from_millis(5)
}

/// The end of the run `windows` windows after `start`: a little before the boundary, so that no
/// request of the next window is counted.
fn after(start: Instant, windows: u64) -> Instant {
    start + Duration::from_millis(WINDOW_MS * windows - 20)
}

fn bases(gw: &Gateway) -> Vec<String> {
    gw.dps.iter().map(|dp| dp.url()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_limit_holds_across_three_data_planes_over_several_windows() {
    let up = MockProvider::openai().start().await;
    let (gw, key) = cluster(&up, 3, false).await;
    let v = gw
        .limit(Scope::Key(&key.key.as_ref().unwrap().id), Some(60), None, None)
        .await;
    gw.wait_all(v).await;

    let start = next_window().await;
    let windows = 4;
    let counts = hammer(&gw, &key.secret, &bases(&gw), 12, after(start, windows)).await;
    let (ok, limited, unavailable, other) = counts.get();
    let limit = 60 * windows;
    eprintln!("requests: {ok} admitted of a limit of {limit} over {windows} windows, {limited} refused");
    assert!(limited > 0, "demand must exceed the limit: {ok} admitted");
    assert_eq!((unavailable, other), (0, 0));
    assert!(
        ok * 100 <= limit * 105,
        "{ok} admitted, limit {limit} over {windows} windows"
    );
    assert!(
        ok * 100 >= limit * 90,
        "{ok} admitted, limit {limit} over {windows} windows: leases stranded"
    );
    assert_eq!(gw.metric("drover_limits_fail_open_total").await, 0);
    // `drover status` shows each data plane's lease traffic.
    let status = gw.status().await;
    assert_eq!(status.dataplanes.len(), 3);
    for d in &status.dataplanes {
        let l = d
            .leases
            .as_ref()
            .unwrap_or_else(|| panic!("no lease traffic for {}", d.id));
        assert!(
            l.streams >= 1 && l.messages > l.asks / 10 && l.granted > 0,
            "{d:?}"
        );
        assert!(
            l.refused > 0,
            "demand exceeded the limit on every data plane: {d:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_token_limit_holds_across_data_planes_counting_what_providers_report() {
    let up = MockProvider::openai().start().await;
    let (gw, key) = cluster(&up, 3, false).await;
    let other = gw.key("acme", &[]).await;
    let v = gw.limit(Scope::Tenant("acme"), None, Some(2_000), None).await;
    gw.wait_all(v).await;

    let start = next_window().await;
    let windows = 3;
    let until = after(start, windows);
    let all = bases(&gw);
    let (a, b) = tokio::join!(
        hammer(&gw, &key.secret, &all, 6, until),
        hammer(&gw, &other.secret, &all, 6, until)
    );
    assert!(a.get().1 + b.get().1 > 0, "demand must exceed the limit");
    let ok = a.get().0 + b.get().0;
    let usage = gw.wait_for_usage(ok).await;
    let tokens = usage.input_tokens + usage.output_tokens;
    let limit = 2_000 * windows;
    assert!(
        tokens * 100 <= limit * 105,
        "{tokens} tokens admitted, limit {limit}"
    );
    assert!(
        tokens * 100 >= limit * 90,
        "{tokens} tokens admitted, limit {limit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_limit_is_never_exceeded_and_every_ending_frees_its_slot() {
    let up = MockProvider::openai()
        .latency(Duration::from_millis(60))
        .stream_chunks(4)
        .chunk_delay(Duration::from_millis(20))
        .start()
        .await;
    let (gw, key) = cluster(&up, 3, false).await;
    let v = gw
        .limit(Scope::Key(&key.key.as_ref().unwrap().id), None, None, Some(4))
        .await;
    gw.wait_all(v).await;
    // Some answers fail upstream (and are retried): the provider never has more than four of
    // this key's requests at once.
    up.script(
        (0..10u32)
            .map(|i| {
                if i.is_multiple_of(2) {
                    drover_tests::Fault::Status(500)
                } else {
                    drover_tests::Fault::Ok
                }
            })
            .collect(),
    );
    let bases = bases(&gw);
    let auth = format!("Bearer {}", key.secret);
    let counts = hammer(
        &gw,
        &key.secret,
        &bases,
        16,
        Instant::now() + Duration::from_secs(3),
    )
    .await;
    assert!(counts.get().1 > 0, "demand must exceed the limit");
    assert!(
        up.max_in_flight() <= 4,
        "{} requests in flight at once",
        up.max_in_flight()
    );

    // Streams cut by their callers free their slots too. (The provider learns of a cut only
    // when it next writes, so it is not counted here.)
    let cutters = (0..3).map(|i| {
        let (http, base, auth) = (gw.clone_client(), bases[i].clone(), auth.clone());
        tokio::spawn(async move {
            for _ in 0..10 {
                http.stream_and_cut(
                    &base,
                    "/v1/chat/completions",
                    &[("authorization", &auth)],
                    body(true),
                )
                .await;
            }
        })
    });
    for c in cutters {
        c.await.unwrap();
    }

    // No slot leaked: four at once still get through, on any data plane.
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.set_default(drover_tests::Fault::Ok);
    up.script(Vec::new());
    let replies = futures_util::future::join_all((0..4).map(|i| {
        let (http, base, auth) = (gw.clone_client(), bases[i % 3].clone(), auth.clone());
        async move {
            let mut status = 0;
            for _ in 0..20 {
                status = http
                    .send_to(
                        &base,
                        "POST",
                        "/v1/chat/completions",
                        &[("authorization", &auth)],
                        body(false),
                    )
                    .await
                    .status
                    .as_u16();
                if status == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            status
        }
    }))
    .await;
    assert_eq!(replies, vec![200; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spend_stays_under_the_cap_plus_one_reservation_with_streams_cut_midway() {
    let up = MockProvider::openai()
        .stream_chunks(5)
        .chunk_delay(Duration::from_millis(10))
        .start()
        .await;
    let (gw, key) = cluster(&up, 3, false).await;
    let cap = 2_000_000; // 0.002 USD
    let v = gw
        .cap(
            Scope::Key(&key.key.as_ref().unwrap().id),
            cap,
            pb::CapPeriod::Total,
        )
        .await;
    gw.wait_all(v).await;
    let bases = bases(&gw);
    let auth = format!("Bearer {}", key.secret);
    let cutters = (0..3).map(|i| {
        let (http, base, auth) = (gw.clone_client(), bases[i].clone(), auth.clone());
        tokio::spawn(async move {
            for _ in 0..30 {
                http.stream_and_cut(
                    &base,
                    "/v1/chat/completions",
                    &[("authorization", &auth)],
                    body(true),
                )
                .await;
            }
        })
    });
    let counts = hammer(
        &gw,
        &key.secret,
        &bases,
        9,
        Instant::now() + Duration::from_secs(4),
    )
    .await;
    for c in cutters {
        c.await.unwrap();
    }
    assert!(counts.get().1 > 0, "the cap must be reached");
    // The worst case of one request: its input estimate and max_tokens at the prices.
    let input = (body(true).len() as i64 + 3) / 4;
    let reservation = input * 1_000 + 20 * 2_000;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = gw.usage_total().await.cost_nano_usd;
    eprintln!("spend: {spent} nano-USD of a cap of {cap} (largest reservation {reservation})");
    assert!(
        spent <= cap + reservation,
        "spent {spent} nano-USD, cap {cap} + {reservation}"
    );
    assert!(spent >= cap * 8 / 10, "spent only {spent} of {cap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_slots_of_a_data_plane_that_vanished_come_back_when_its_leases_expire() {
    let up = MockProvider::openai()
        .latency(Duration::from_millis(80))
        .start()
        .await;
    let (mut gw, key) = cluster(&up, 3, false).await;
    let v = gw
        .limit(Scope::Key(&key.key.as_ref().unwrap().id), None, None, Some(6))
        .await;
    gw.wait_all(v).await;
    let all = bases(&gw);
    hammer(
        &gw,
        &key.secret,
        &all,
        12,
        Instant::now() + Duration::from_secs(1),
    )
    .await;
    gw.dps[2].stop().await;
    let survivors = all[..2].to_vec();
    // Until the vanished data plane's leases expire, the others may get fewer slots; after,
    // all of them.
    tokio::time::sleep(Duration::from_millis(TIMES.ttl_ms + 4 * TIMES.heartbeat_ms)).await;
    up.reset_max_in_flight();
    hammer(
        &gw,
        &key.secret,
        &survivors,
        12,
        Instant::now() + Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        up.max_in_flight(),
        6,
        "the two data planes left use every slot again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_restart_keeps_spend_exact_and_each_tenant_fails_as_it_chose() {
    let up = MockProvider::openai().start().await;
    let (mut gw, open) = cluster(&up, 1, false).await;
    gw.tenant_on_cp_loss("strict", true).await;
    let closed = gw.key("strict", &[]).await;
    for k in [&open, &closed] {
        gw.limit(Scope::Key(&k.key.as_ref().unwrap().id), Some(100_000), None, None)
            .await;
    }
    let v = gw
        .cap(Scope::Tenant("acme"), 1_000_000_000, pb::CapPeriod::Total)
        .await;
    gw.wait_all(v).await;
    let base = gw.url();
    let http = gw.clone_client();
    let call = |secret: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.send_to(
                &base,
                "POST",
                "/v1/chat/completions",
                &[("authorization", &format!("Bearer {secret}"))],
                body(false),
            )
            .await
        }
    };
    let (mut served, mut sent) = (0, 0);
    for _ in 0..5 {
        assert_eq!(call(open.secret.clone()).await.status, 200);
        assert_eq!(call(closed.secret.clone()).await.status, 200);
        (served, sent) = (served + 2, sent + 2);
    }

    gw.cp.kill().await;
    // Once what the data plane holds has expired, the tenant that fails closed is refused and
    // the one that fails open is served, counted.
    tokio::time::sleep(Duration::from_millis(TIMES.ttl_ms + 500)).await;
    let refused = call(closed.secret.clone()).await;
    sent += 1;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("fails closed"), "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    for _ in 0..5 {
        assert_eq!(call(open.secret.clone()).await.status, 200);
        (served, sent) = (served + 1, sent + 1);
    }
    assert!(gw.metric("drover_limits_fail_open_total").await >= 5);

    gw.cp.restart().await;
    gw.admin = gw.cp.admin().await;
    // Leases are granted again once the restarted control plane has heard from its data
    // planes (at most one time to live).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = call(closed.secret.clone()).await;
        sent += 1;
        if reply.status == 200 {
            served += 1;
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            Instant::now() < deadline,
            "leases not re-established: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing counted twice: the ledger has every request once (refusals too), the provider
    // saw only those served, and the tenant's cap counts exactly the ledger's cost.
    let usage = gw.wait_for_usage(sent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.usage_total().await.requests, sent);
    assert_eq!(usage.requests, sent);
    assert_eq!(up.calls(), served);
    let acme = gw
        .admin
        .clone()
        .query_usage(pb::UsageQuery {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total
        .unwrap();
    let caps = gw
        .admin
        .clone()
        .list_caps(pb::ListCapsRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .caps;
    assert_eq!(caps.len(), 1);
    assert!(acme.cost_nano_usd > 0);
    assert_eq!(caps[0].spent_nano_usd, acme.cost_nano_usd);
}
