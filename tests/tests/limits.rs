//! Rate limits and spend caps as a caller sees them (docs/limits-and-caps.md): the 429 of each
//! SDK family with the headers it reads, the headers on admitted answers, soft and hard caps,
//! unpriced models under a cap, and the modules switched at runtime.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::pb;
use drover_tests::gateway::Scope;
use drover_tests::{Gateway, MockProvider, Reply};

/// One data plane, route `m` to the mock's `gpt-x` (priced 1 and 2 USD per million tokens) and
/// `free` to an unpriced model, tenant `acme` with one key, and `auth` on.
async fn gateway(up: &MockProvider) -> (Gateway, pb::KeyWithSecretResponse) {
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/gpt-x"]).await;
    gw.route("free", &["up/unpriced-model"]).await;
    gw.price("gpt-x", 1.0, 2.0).await;
    gw.tenant("acme").await;
    let key = gw.key("acme", &[]).await;
    let v = gw.module("auth", true).await;
    gw.wait_all(v).await;
    (gw, key)
}

fn key_id(key: &pb::KeyWithSecretResponse) -> &str {
    &key.key.as_ref().unwrap().id
}

async fn chat(gw: &Gateway, secret: &str, model: &str) -> Reply {
    let body = serde_json::json!({
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    });
    gw.send_to(
        &gw.url(),
        "POST",
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {secret}"))],
        body.to_string(),
    )
    .await
}

async fn message(gw: &Gateway, secret: &str) -> Reply {
    let body = serde_json::json!({
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    });
    gw.send_to(
        &gw.url(),
        "POST",
        "/v1/messages",
        &[("x-api-key", secret), ("anthropic-version", "2023-06-01")],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn over_a_limit_each_sdk_family_gets_its_429_and_its_headers() {
    let up = MockProvider::openai().start().await;
    let (gw, key) = gateway(&up).await;
    gw.limit(Scope::Key(key_id(&key)), Some(3), Some(1_000_000), None)
        .await;
    let v = gw.module("rate_limit", true).await;
    gw.wait_all(v).await;

    let first = chat(&gw, &key.secret, "m").await;
    assert_eq!(first.status, 200, "{}", first.text());
    // Admitted answers carry the limits, so clients can pace themselves.
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("3"));
    let remaining: u64 = first
        .header("x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= 2, "{remaining}");
    assert_eq!(first.header("x-ratelimit-limit-tokens"), Some("1000000"));
    assert!(first.header("x-ratelimit-reset-requests").unwrap().ends_with('s'));
    let second = message(&gw, &key.secret).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("anthropic-ratelimit-requests-limit"), Some("3"));
    assert!(
        second
            .header("anthropic-ratelimit-requests-reset")
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(chat(&gw, &key.secret, "m").await.status, 200);

    let refused = chat(&gw, &key.secret, "m").await;
    assert_eq!(refused.status, 429);
    let body = refused.json();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "rate limit of key {}: 3 requests per minute",
            key_id(&key)
        )),
        "{msg}"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(refused.header("x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));

    let refused = message(&gw, &key.secret).await;
    assert_eq!(refused.status, 429);
    let body = refused.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        refused.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert_eq!(up.calls(), 3, "refused requests never reach the provider");
    assert_eq!(gw.metric("drover_rate_limited_total").await, 2);
}

#[tokio::test]
async fn caps_warn_past_their_soft_mark_refuse_at_the_hard_one_and_never_run_free() {
    let up = MockProvider::openai().start().await;
    let (gw, key) = gateway(&up).await;
    // Each request reserves its worst case: 2 input tokens at 1 USD/M (the body is short)
    // plus 16 output at 2 USD/M; the mock answers with a few tokens.
    let set =
        |period: pb::CapPeriod, limit_nano_usd: i64, soft_at: f64, allow_unpriced: bool| pb::SetCapRequest {
            scope: Some(Scope::Key(key_id(&key)).wire()),
            period: period.into(),
            limit_nano_usd,
            soft_at,
            allow_unpriced,
        };
    gw.admin
        .clone()
        .set_cap(set(pb::CapPeriod::Day, 200_000, 0.1, false))
        .await
        .unwrap();
    let v = gw.module("spend_cap", true).await;
    gw.wait_all(v).await;

    // An unpriced model under a cap is refused, not free.
    let unpriced = chat(&gw, &key.secret, "free").await;
    assert_eq!(unpriced.status, 429, "{}", unpriced.text());
    assert!(unpriced.text().contains("has no price"), "{}", unpriced.text());
    assert_eq!(unpriced.json()["error"]["code"], "unpriced_model");

    let mut warned = false;
    let mut served = 0;
    let refused = loop {
        let reply = chat(&gw, &key.secret, "m").await;
        if reply.status != 200 {
            break reply;
        }
        served += 1;
        warned |= reply.header("x-drover-spend-warning").is_some();
        assert!(served < 1_000, "the cap never refused");
        // Let the spend reach the ledger, as it would between real requests.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(warned, "no warning past the soft cap");
    assert!(gw.metric("drover_spend_soft_cap_total").await > 0);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "insufficient_quota");
    let msg = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains(&format!(
            "spend cap of 0.000200000 USD per day of key {} reached",
            key_id(&key)
        )),
        "{msg}"
    );
    // A day cap resets at midnight UTC: retry-after says when.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = gw.usage_total().await.cost_nano_usd;
    assert!(spent <= 200_000 + 40_000, "spent {spent}");

    // Allowing unpriced models lets them through (at no counted cost).
    let v = gw
        .admin
        .clone()
        .set_cap(set(pb::CapPeriod::Month, 1_000_000_000, 0.0, true))
        .await
        .unwrap()
        .into_inner()
        .version;
    gw.admin
        .clone()
        .remove_cap(pb::RemoveCapRequest {
            scope: Some(Scope::Key(key_id(&key)).wire()),
            period: pb::CapPeriod::Day.into(),
        })
        .await
        .unwrap();
    gw.wait_all(v + 1).await;
    assert_eq!(chat(&gw, &key.secret, "free").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modules_switch_on_and_off_at_runtime_without_dropping_a_request() {
    let up = MockProvider::openai().start().await;
    let (gw, key) = gateway(&up).await;
    let v = gw.limit(Scope::Tenant("acme"), Some(5), None, None).await;
    gw.wait_all(v).await;
    // The limit is stored but its module is off: nothing is refused.
    for _ in 0..8 {
        assert_eq!(chat(&gw, &key.secret, "m").await.status, 200);
    }

    // Traffic keeps flowing while the module is switched on and off.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, limited, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let http = gw.clone_client();
    let base = gw.url();
    let load = {
        let (stop, ok, limited, failed, secret) = (
            stop.clone(),
            ok.clone(),
            limited.clone(),
            failed.clone(),
            key.secret.clone(),
        );
        tokio::spawn(async move {
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
                .to_string();
            while !stop.load(Ordering::Relaxed) {
                let reply = http
                    .send_to(
                        &base,
                        "POST",
                        "/v1/chat/completions",
                        &[("authorization", &format!("Bearer {secret}"))],
                        body.clone(),
                    )
                    .await;
                match reply.status.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => limited.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    for _ in 0..3 {
        let v = gw.module("rate_limit", true).await;
        gw.wait_all(v).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = gw.module("rate_limit", false).await;
        gw.wait_all(v).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a request failed while modules switched"
    );
    assert!(limited.load(Ordering::Relaxed) > 0, "the limit applied while on");
    assert!(ok.load(Ordering::Relaxed) > 5, "requests went through while off");

    // Off again: nothing refused.
    for _ in 0..5 {
        assert_eq!(chat(&gw, &key.secret, "m").await.status, 200);
    }
}
