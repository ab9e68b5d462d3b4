//! The response cache: opt-in per route, exact match, replayable as a stream, never a
//! failure, bypassed on request, metered at cost 0 with the saving recorded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::time::Duration;

use drover_proto::pb;
use drover_tests::{Fault, Gateway, MockProvider};
use serde_json::{Value, json};

async fn cached_gateway() -> (Gateway, MockProvider) {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| c.usage.flush_interval = Duration::from_millis(20))
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    gw.route_cached("m", &["up/gpt-4o-mini"], 300).await;
    (gw, up)
}

fn text_of_stream(reply: &drover_tests::Reply) -> String {
    let events = reply.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        reply.text()
    );
    events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache() {
    let (gw, up) = cached_gateway().await;
    let v = gw
        .admin
        .clone()
        .set_price(pb::SetPriceRequest {
            price: Some(pb::Price {
                model: "gpt-4o-mini".into(),
                input_per_mtok: 1.0,
                output_per_mtok: 1.0,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .version;
    gw.wait_all(v).await;

    let first = gw.chat("m", "hello cache").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-drover-cache"), Some("miss"));
    // Same request, different spacing and key order: still the same entry.
    let body =
        r#"{ "messages": [{"content": "hello cache", "role": "user"}], "stream": false, "model": "m" }"#;
    let second = gw.send("POST", "/v1/chat/completions", body).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-drover-cache"), Some("hit"));
    assert_eq!(second.header("x-drover-cost-usd"), Some("0.000000000"));
    assert_eq!(second.header("x-drover-provider"), Some("up"));
    assert_eq!(second.body, first.body);
    assert_eq!(up.calls(), 1);

    // A different request is a different entry.
    assert_eq!(
        gw.chat("m", "something else").await.header("x-drover-cache"),
        Some("miss")
    );
    assert_eq!(up.calls(), 2);

    // Hits are metered at cost 0, with the saving recorded.
    let total = gw.wait_for_usage(3).await;
    assert_eq!(total.requests, 3);
    assert_eq!(total.cache_hits, 1);
    assert!(total.saved_nano_usd > 0);
    let usage = first.json()["usage"].clone();
    let miss_cost =
        (usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap()) * 1000;
    assert_eq!(
        total.saved_nano_usd, miss_cost,
        "the hit saved what the miss cost"
    );
}

#[tokio::test]
async fn a_cached_answer_is_replayed_as_a_stream_and_a_cached_stream_as_a_whole() {
    let (gw, up) = cached_gateway().await;
    let whole = gw.chat("m", "stream me").await;
    let text = whole.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let replay = gw.chat_stream("m", "stream me").await;
    assert_eq!(replay.header("x-drover-cache"), Some("hit"));
    assert_eq!(replay.header("content-type"), Some("text/event-stream"));
    assert_eq!(text_of_stream(&replay), text);
    assert_eq!(up.calls(), 1);

    let streamed = gw.chat_stream("m", "first as a stream").await;
    assert_eq!(streamed.header("x-drover-cache"), Some("miss"));
    let text = text_of_stream(&streamed);
    let again = gw.chat("m", "first as a stream").await;
    assert_eq!(again.header("x-drover-cache"), Some("hit"));
    assert_eq!(again.json()["choices"][0]["message"]["content"], json!(text));
    let replayed = gw.chat_stream("m", "first as a stream").await;
    assert_eq!(replayed.header("x-drover-cache"), Some("hit"));
    assert_eq!(text_of_stream(&replayed), text);
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn no_cache_bypasses_and_uncached_routes_say_nothing() {
    let (gw, up) = cached_gateway().await;
    gw.chat("m", "hi").await;
    let bypass = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/chat/completions",
            &[("cache-control", "no-cache")],
            drover_tests::chat_body("m", "hi", false),
        )
        .await;
    assert_eq!(bypass.header("x-drover-cache"), Some("bypass"));
    assert_eq!(up.calls(), 2);
    gw.route("plain", &["up/gpt-4o-mini"]).await;
    let plain = gw.chat("plain", "hi").await;
    assert_eq!(plain.header("x-drover-cache"), None);
    assert_eq!(gw.chat("plain", "hi").await.header("x-drover-cache"), None);
    assert_eq!(up.calls(), 4, "a route without a TTL is never cached");
}

#[tokio::test]
async fn failures_are_never_cached() {
    let (gw, up) = cached_gateway().await;
    up.script(vec![Fault::Status(400).with_message("bad request")]);
    assert_eq!(gw.chat("m", "x").await.status, 400);
    assert_eq!(gw.chat("m", "x").await.header("x-drover-cache"), Some("miss"));
    assert_eq!(up.calls(), 2);

    up.script(vec![Fault::CutStream { after_chunks: 2 }]);
    let cut = gw.chat_stream("m", "cut me").await;
    assert!(!cut.events().iter().any(|e| e == "[DONE]"));
    let retry = gw.chat_stream("m", "cut me").await;
    assert_eq!(
        retry.header("x-drover-cache"),
        Some("miss"),
        "a broken stream is not stored"
    );
    assert_eq!(retry.events().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        gw.chat_stream("m", "cut me").await.header("x-drover-cache"),
        Some("hit")
    );
}

#[tokio::test]
async fn anthropic_callers_get_their_own_cached_answers() {
    let (gw, up) = cached_gateway().await;
    let first = gw.message("m", "hello", false).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-drover-cache"), Some("miss"));
    // The OpenAI-format entry for the same words is not the Anthropic caller's entry.
    gw.chat("m", "hello").await;
    assert_eq!(up.calls(), 2);
    let hit = gw.message("m", "hello", false).await;
    assert_eq!(hit.header("x-drover-cache"), Some("hit"));
    assert_eq!(hit.json()["type"], "message");
    let stream = gw.message("m", "hello", true).await;
    assert_eq!(stream.header("x-drover-cache"), Some("hit"));
    assert_eq!(
        stream.named_events().last().map(|(n, _)| n.as_str()),
        Some("message_stop")
    );
    assert_eq!(up.calls(), 2);
}
