//! Failover, retries, cool-down and circuit breaking, counted on the mock providers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::time::Duration;

use drover_tests::{Fault, Gateway, MockProvider};

#[tokio::test]
async fn fails_over_from_a_failing_first_target() {
    let bad = MockProvider::openai()
        .default_fault(Fault::Status(500))
        .start()
        .await;
    let good = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("bad", &bad.base_url()).await;
    gw.provider("good", &good.base_url()).await;
    gw.route("m", &["bad/one", "good/two"]).await;

    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-provider"), Some("good"));
    assert_eq!(reply.json()["model"], "two");
    assert_eq!(bad.calls(), 1, "one attempt on the failing target");
    assert_eq!(good.calls(), 1, "then one on the next");
}

#[tokio::test]
async fn retries_one_target_within_the_attempt_limit() {
    let flaky = MockProvider::openai().fail_first(2, 503).start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("flaky", &flaky.base_url()).await;
    gw.route("m", &["flaky/x"]).await;

    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        flaky.calls(),
        3,
        "two failures, then success on the third attempt"
    );

    // With every attempt failing, the caller gets the last failure after exactly max_attempts.
    flaky.set_default(Fault::Status(500));
    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_error");
    assert_eq!(flaky.calls(), 6);
}

#[tokio::test]
async fn connection_resets_and_refused_connections_fail_over() {
    let resetting = MockProvider::openai().default_fault(Fault::Reset).start().await;
    let good = MockProvider::openai().start().await;
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::builder().start().await;
    gw.provider("reset", &resetting.base_url()).await;
    gw.provider("closed", &format!("http://{closed}/v1")).await;
    gw.provider("good", &good.base_url()).await;
    // A reset comes after the provider read the request: failing over is the route's choice.
    gw.route_retrying_after_send("m", &["closed/a", "reset/b", "good/c"])
        .await;

    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-provider"), Some("good"));
    assert!(resetting.calls() >= 1);

    // By default a refused connection still fails over (nothing was sent), a reset does not.
    gw.route("plain", &["closed/a", "reset/b", "good/c"]).await;
    let (resets, goods) = (resetting.calls(), good.calls());
    let reply = gw.chat("plain", "hi").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(resetting.calls(), resets + 1, "the reset target was tried once");
    assert_eq!(good.calls(), goods, "and nothing after it");

    let direct = gw.chat("closed/a", "hi").await;
    assert_eq!(direct.status, 502);
    let err = direct.json();
    assert!(
        !err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&closed.port().to_string()),
        "no internal address"
    );
}

#[tokio::test]
async fn a_slow_target_times_out_and_fails_over() {
    let slow = MockProvider::openai()
        .default_fault(Fault::Delay(Duration::from_secs(5)))
        .start()
        .await;
    let good = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| c.proxy.upstream_timeout = Duration::from_millis(300))
        .start()
        .await;
    gw.provider("slow", &slow.base_url()).await;
    gw.provider("good", &good.base_url()).await;
    gw.route("m", &["slow/a", "good/b"]).await;
    gw.route("only-slow", &["slow/a"]).await;

    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-provider"), Some("good"));

    let reply = gw.chat("only-slow", "hi").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn a_429_cools_the_target_down_until_retry_after() {
    let limited = MockProvider::openai()
        .then(Fault::Status(429).with_retry_after(30))
        .start()
        .await;
    let backup = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("limited", &limited.base_url()).await;
    gw.provider("backup", &backup.base_url()).await;
    gw.route("m", &["limited/a", "backup/b"]).await;

    assert_eq!(
        gw.chat("m", "one").await.header("x-drover-provider"),
        Some("backup")
    );
    assert_eq!(
        gw.chat("m", "two").await.header("x-drover-provider"),
        Some("backup")
    );
    assert_eq!(limited.calls(), 1, "the cooling target is skipped, not retried");
    assert_eq!(backup.calls(), 2);

    // Alone, a cooling target makes the gateway answer 503 with retry-after, without calling it.
    gw.route("alone", &["limited/a"]).await;
    let reply = gw.chat("alone", "x").await;
    assert_eq!(reply.status, 503);
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.calls(), 1);
}

#[tokio::test]
async fn a_provider_429_reaches_the_caller_as_429_when_nothing_else_works() {
    let limited = MockProvider::openai()
        .default_fault(Fault::Status(429).with_retry_after(0))
        .start()
        .await;
    let gw = Gateway::builder().start().await;
    gw.provider("limited", &limited.base_url()).await;
    let reply = gw.chat("limited/a", "x").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    assert!(reply.header("retry-after").is_some());
}

#[tokio::test]
async fn client_errors_are_not_retried_and_pass_through() {
    let up = MockProvider::openai()
        .then(Fault::Status(400).with_message("messages is required"))
        .start()
        .await;
    let other = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.provider("other", &other.base_url()).await;
    gw.route("m", &["up/a", "other/b"]).await;

    let reply = gw.chat("m", "x").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["message"], "messages is required");
    assert_eq!(up.calls(), 1);
    assert_eq!(
        other.calls(),
        0,
        "a 4xx is the caller's problem, not the target's"
    );
}

#[tokio::test]
async fn circuit_breaker_skips_a_dead_target_and_probes_it_later() {
    let dead = MockProvider::openai()
        .default_fault(Fault::Status(500))
        .start()
        .await;
    let good = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| {
            c.proxy.breaker.failures = 3;
            c.proxy.breaker.open_for = Duration::from_millis(1500);
        })
        .start()
        .await;
    gw.provider("dead", &dead.base_url()).await;
    gw.provider("good", &good.base_url()).await;
    gw.route("m", &["dead/a", "good/b"]).await;

    for _ in 0..10 {
        let reply = gw.chat("m", "x").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-drover-provider"), Some("good"));
    }
    assert_eq!(
        dead.calls(),
        3,
        "after 3 failures the breaker opens and the dead target is skipped"
    );
    assert_eq!(good.calls(), 10);

    let metrics = gw.metrics().await;
    assert!(metrics.contains("drover_breakers_open 1"), "{metrics}");

    // After the open period one probe goes through; the target recovered, so it is used again.
    dead.set_default(Fault::Ok);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let reply = gw.chat("m", "x").await;
    assert_eq!(reply.header("x-drover-provider"), Some("dead"));
    assert_eq!(dead.calls(), 4);
    assert_eq!(gw.chat("m", "x").await.header("x-drover-provider"), Some("dead"));
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event_not_done() {
    let up = MockProvider::openai()
        .stream_chunks(6)
        .then(Fault::CutStream { after_chunks: 2 })
        .start()
        .await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;

    let reply = gw.chat_stream("up/m", "hello there my friend").await;
    assert_eq!(reply.status, 200, "the stream had started");
    let events = reply.events();
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_incomplete", "{events:?}");
    assert!(
        events.len() >= 2,
        "the chunks before the cut were relayed: {events:?}"
    );
    assert_eq!(up.calls(), 1, "no retry once bytes reached the caller");

    let metrics = gw.metrics().await;
    assert!(metrics.contains("drover_streams_incomplete_total 1"), "{metrics}");
}

#[tokio::test]
async fn a_stream_that_dies_before_its_first_byte_fails_over() {
    let dying = MockProvider::openai().then(Fault::Reset).start().await;
    let good = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("dying", &dying.base_url()).await;
    gw.provider("good", &good.base_url()).await;
    gw.route_retrying_after_send("m", &["dying/a", "good/b"]).await;

    let reply = gw.chat_stream("m", "hi").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-drover-provider"), Some("good"));
    assert_eq!(reply.events().last().map(String::as_str), Some("[DONE]"));

    // On a route that does not retry after sending, the caller gets the failure instead.
    gw.route("plain", &["dying/a", "good/b"]).await;
    dying.push(Fault::Reset);
    let reply = gw.chat_stream("plain", "hi").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(good.calls(), 1);
}

#[tokio::test]
async fn weighted_routes_spread_by_weight_and_fail_over_to_the_rest() {
    let heavy = MockProvider::openai().start().await;
    let light = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("heavy", &heavy.base_url()).await;
    gw.provider("light", &light.base_url()).await;
    gw.route_with(
        "m",
        drover_proto::pb::RouteStrategy::Weighted,
        &[("heavy/a", 9), ("light/b", 1)],
    )
    .await;

    for _ in 0..200 {
        assert_eq!(gw.chat("m", "x").await.status, 200);
    }
    let (h, l) = (heavy.calls(), light.calls());
    assert_eq!(h + l, 200);
    assert!(h >= 160 && l >= 3, "heavy={h} light={l}");

    heavy.set_default(Fault::Status(503));
    let reply = gw.chat("m", "x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-drover-provider"), Some("light"));
}
