//! Every request is metered once: costs from the price table, streams billed with the
//! provider's counts, and the ledger exact across control-plane and data-plane restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::time::Duration;

use drover_proto::pb;
use drover_tests::gateway::{TestDataPlane, dataplane_config};
use drover_tests::{Gateway, MockProvider};
use serde_json::{Value, json};

fn fast_usage(c: &mut drover_dataplane::Config) {
    c.usage.flush_interval = Duration::from_millis(20);
}

async fn set_price(gw: &Gateway, model: &str, input: f64, output: f64) {
    let v = gw
        .admin
        .clone()
        .set_price(pb::SetPriceRequest {
            price: Some(pb::Price {
                model: model.into(),
                input_per_mtok: input,
                output_per_mtok: output,
                cached_input_per_mtok: None,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    gw.wait_all(v).await;
}

/// Usage as the caller saw it: (prompt, completion) tokens.
fn seen_usage(reply: &drover_tests::Reply, stream: bool) -> (u64, u64) {
    let usage = if stream {
        reply
            .events()
            .iter()
            .rev()
            .find_map(|e| {
                serde_json::from_str::<Value>(e)
                    .ok()
                    .filter(|v| v["usage"].is_object())
            })
            .unwrap()["usage"]
            .clone()
    } else {
        reply.json()["usage"].clone()
    };
    (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn non_stream_answers_carry_their_cost_and_are_recorded() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/priced", "up/free"]).await;
    // $2 per million input tokens, $8 per million output tokens: 2,000 and 8,000 nano-USD per token.
    set_price(&gw, "priced", 2.0, 8.0).await;

    let reply = gw.chat("m", "hello world").await;
    assert_eq!(reply.status, 200);
    let (input, output) = seen_usage(&reply, false);
    let nano = input * 2_000 + output * 8_000;
    let header = reply.header("x-drover-cost-usd").expect("cost header");
    assert_eq!(
        header,
        format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
    );

    let t = gw.wait_for_usage(1).await;
    assert_eq!(
        (t.input_tokens, t.output_tokens, t.cost_nano_usd, t.unpriced),
        (input, output, nano as i64, 0)
    );

    // A model without a price is flagged, never silently free.
    let reply = gw.chat("up/free", "hello").await;
    assert_eq!(reply.header("x-drover-cost-usd"), None);
    let t = gw.wait_for_usage(2).await;
    assert_eq!(t.unpriced, 1);
    let metrics = gw.metrics().await;
    assert!(metrics.contains("drover_unpriced_requests_total 1"), "{metrics}");
}

#[tokio::test]
async fn streams_are_billed_with_the_providers_counts_and_the_usage_chunk_stays_hidden() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/priced"]).await;
    set_price(&gw, "priced", 1.0, 1.0).await;

    // The caller did not ask for usage: the gateway asks upstream anyway and strips the chunk.
    let reply = gw.chat_stream("m", "count the tokens please").await;
    assert_eq!(reply.events().last().map(String::as_str), Some("[DONE]"));
    assert!(
        !reply.events().iter().any(|e| e.contains("\"usage\":{")),
        "the caller did not ask for usage: {}",
        reply.text()
    );
    assert_eq!(up.last_json().unwrap()["stream_options"]["include_usage"], true);

    // The same request asking for usage shows what the ledger recorded.
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "count the tokens please"}]});
    let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
    let (input, output) = seen_usage(&reply, true);
    let t = gw.wait_for_usage(2).await;
    assert_eq!((t.input_tokens, t.output_tokens), (2 * input, 2 * output));
    assert!(t.cost_nano_usd > 0);
    assert_eq!(t.failed, 0);
}

#[tokio::test]
async fn an_abandoned_stream_is_billed_for_what_was_produced() {
    let up = MockProvider::openai()
        .stream_chunks(20)
        .chunk_delay(Duration::from_millis(30))
        .start()
        .await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/priced"]).await;

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("content-type", "application/json")
        .body(drover_tests::chat_body(
            "m",
            "tell me a long story about the sea",
            true,
        ))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    // Read until some content has arrived, then go away.
    let mut seen = String::new();
    while seen.matches("\"content\":\"").count() < 4 {
        seen.push_str(&String::from_utf8_lossy(&stream.next().await.unwrap().unwrap()));
    }
    drop(stream);

    let t = gw.wait_for_usage(1).await;
    assert_eq!(t.failed, 1, "an abandoned stream did not complete");
    assert!(
        t.input_tokens > 0 && t.output_tokens > 0,
        "partially billed: {t:?}"
    );
    let by_day = gw
        .admin
        .clone()
        .query_usage(pb::UsageQuery {
            group_by: pb::UsageGroupBy::Model as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_day.rows.len(), 1);
    assert_eq!(by_day.rows[0].group, "priced");
}

#[tokio::test]
async fn usage_survives_a_control_plane_restart_exactly_once() {
    let up = MockProvider::openai().start().await;
    let mut gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/priced"]).await;
    set_price(&gw, "priced", 3.0, 5.0).await;

    let mut expected = (0u64, 0u64);
    let mut sent = 0u64;
    for i in 0..10 {
        let stream = i % 2 == 0;
        let body = json!({"model": "m", "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
                          "messages": [{"role": "user", "content": format!("request number {i}")}]});
        let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
        let (a, b) = seen_usage(&reply, stream);
        expected = (expected.0 + a, expected.1 + b);
        sent += 1;
        if i == 4 {
            gw.cp.kill().await;
        }
    }
    gw.cp.restart().await;
    gw.admin = gw.cp.admin().await;
    let t = gw.wait_for_usage(sent).await;
    // Let any resend arrive, then check nothing was counted twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t2 = gw.usage_total().await;
    assert_eq!(t2, t, "stable after resends");
    assert_eq!(t.requests, sent);
    assert_eq!((t.input_tokens, t.output_tokens), expected);
    assert_eq!(t.cost_nano_usd, (expected.0 * 3_000 + expected.1 * 5_000) as i64);
    assert_eq!(up.calls(), sent, "the mock served exactly what was billed");
}

#[tokio::test]
async fn the_spool_file_keeps_usage_across_a_data_plane_restart() {
    let up = MockProvider::openai().start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("usage.spool");
    let mut gw = Gateway::builder()
        .configure({
            let spool = spool.clone();
            move |c| {
                fast_usage(c);
                c.usage.spool_file = Some(spool.clone());
            }
        })
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/m"]).await;

    gw.cp.kill().await;
    let mut expected = (0, 0);
    for i in 0..5 {
        let reply = gw
            .chat("m", &format!("while the control plane is down {i}"))
            .await;
        assert_eq!(reply.status, 200);
        let (a, b) = seen_usage(&reply, false);
        expected = (expected.0 + a, expected.1 + b);
    }
    // The data plane goes away with its records unsent; a new one on the same spool file sends them.
    gw.dps[0].stop().await;
    gw.cp.restart().await;
    gw.admin = gw.cp.admin().await;
    let mut config = dataplane_config(&gw.cp.url());
    fast_usage(&mut config);
    config.usage.spool_file = Some(spool.clone());
    let _dp = TestDataPlane::start(config).await;
    let t = gw.wait_for_usage(5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.usage_total().await, t);
    assert_eq!(
        (t.requests, t.input_tokens, t.output_tokens),
        (5, expected.0, expected.1)
    );
}

#[tokio::test]
async fn requests_that_reuse_a_request_id_are_each_billed() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/m"]).await;
    for _ in 0..3 {
        let reply = gw
            .send_to(
                &gw.url(),
                "POST",
                "/v1/chat/completions",
                &[("x-request-id", "same-id")],
                drover_tests::chat_body("m", "hi", false),
            )
            .await;
        assert_eq!(reply.header("x-request-id"), Some("same-id"), "echoed as sent");
    }
    let t = gw.wait_for_usage(3).await;
    assert_eq!(t.requests, 3);
}

#[tokio::test]
async fn with_usage_reporting_off_requests_are_metered_but_nothing_reaches_the_ledger() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/m"]).await;
    let v = set_price_version(&gw).await;

    let mut config = dataplane_config(&gw.cp.url());
    fast_usage(&mut config);
    config.usage.report = false;
    let quiet = TestDataPlane::start(config).await;
    quiet.wait_for_version(v).await;
    for i in 0..3 {
        let reply = gw
            .send_to(
                &quiet.url(),
                "POST",
                "/v1/chat/completions",
                &[],
                drover_tests::chat_body("m", &format!("unreported {i}"), false),
            )
            .await;
        assert_eq!(reply.status, 200);
        // Still metered: the caller sees the cost.
        assert!(reply.header("x-drover-cost-usd").is_some());
    }
    let metrics = gw.metrics_at(&quiet.url()).await;
    assert!(metrics.contains("drover_usage_records_total 3"), "{metrics}");
    assert!(metrics.contains("drover_usage_dropped_total 0"), "{metrics}");

    // A request through the reporting data plane reaches the ledger; the three before it never do.
    assert_eq!(gw.chat("m", "reported").await.status, 200);
    let t = gw.wait_for_usage(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.usage_total().await.requests, 1, "{t:?}");
}

/// Prices model `m` and returns the policy version that carries the price.
async fn set_price_version(gw: &Gateway) -> u64 {
    set_price(gw, "m", 1.0, 2.0).await;
    gw.version().await
}

/// A stream as Python servers write it: `json.dumps` puts a space after every `:` and `,`.
const SPACED_STREAM: &str = concat!(
    "data: {\"id\": \"c1\", \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {\"role\": \"assistant\", \"content\": \"Hello\"}, \"finish_reason\": null}], \"usage\": null}\n\n",
    "data: {\"id\": \"c1\", \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \" there\"}, \"finish_reason\": \"stop\"}], \"usage\": null}\n\n",
    "data: {\"id\": \"c1\", \"object\": \"chat.completion.chunk\", \"choices\": [], \"usage\": {\"prompt_tokens\": 11, \"completion_tokens\": 7, \"total_tokens\": 18}}\n\n",
    "data: [DONE]\n\n",
);

#[tokio::test]
async fn a_provider_writing_json_with_spaces_is_metered_and_its_usage_chunk_hidden() {
    let up = MockProvider::openai()
        .default_fault(drover_tests::Fault::replay(
            200,
            "text/event-stream",
            SPACED_STREAM,
        ))
        .start()
        .await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/priced"]).await;
    set_price(&gw, "priced", 1.0, 1.0).await;

    // The caller did not ask for usage: every chunk it gets has a choice to index.
    let reply = gw.chat_stream("m", "hi").await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert!(
            chunk["choices"][0].is_object(),
            "a chunk without a choice reached a caller that did not ask for usage: {e}"
        );
    }
    // Billed from the provider's counts, not an estimate.
    let t = gw.wait_for_usage(1).await;
    assert_eq!((t.input_tokens, t.output_tokens), (11, 7));
    assert_eq!(t.cost_nano_usd, 18_000);

    // A caller that asked for usage gets the chunk as the provider wrote it.
    let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
    assert!(
        reply
            .text()
            .contains("\"choices\": [], \"usage\": {\"prompt_tokens\": 11"),
        "{}",
        reply.text()
    );
    let t = gw.wait_for_usage(2).await;
    assert_eq!((t.input_tokens, t.output_tokens), (22, 14));
}

#[tokio::test]
async fn the_same_answer_is_billed_the_same_whatever_the_callers_format() {
    // DeepSeek reports cached prompt tokens as `prompt_cache_hit_tokens`.
    let answer = json!({
        "id": "c2", "object": "chat.completion", "created": 1, "model": "deepseek-chat",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                  "prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40}
    });
    let up = MockProvider::openai()
        .default_fault(drover_tests::Fault::replay(
            200,
            "application/json",
            answer.to_string(),
        ))
        .start()
        .await;
    let gw = Gateway::builder().configure(fast_usage).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/deepseek-chat"]).await;

    // Relayed as is to an OpenAI caller.
    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 200);
    let t = gw.wait_for_usage(1).await;
    assert_eq!(
        (t.input_tokens, t.output_tokens, t.cached_input_tokens),
        (100, 5, 60)
    );

    // Translated for an Anthropic caller.
    let body = json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    let reply = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/messages",
            &[("anthropic-version", "2023-06-01")],
            body.to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let t = gw.wait_for_usage(2).await;
    assert_eq!(
        (t.input_tokens, t.output_tokens, t.cached_input_tokens),
        (200, 10, 120)
    );
}
