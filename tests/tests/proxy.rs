//! Proxying through an alias: non-stream, stream, embeddings, completions, models, and a
//! real OpenAI client crate as the caller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use drover_tests::{Gateway, MockProvider};
use futures_util::StreamExt;

#[tokio::test]
async fn non_stream_chat_through_an_alias_reaches_the_target_model() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("fast", &["up/gpt-4o-mini"]).await;

    let reply = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/chat/completions",
            &[
                ("x-request-id", "trace-123"),
                ("authorization", "Bearer caller-secret"),
            ],
            drover_tests::chat_body("fast", "hello world", false),
        )
        .await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock reply to: hello world"
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(reply.header("x-drover-provider"), Some("up"));
    assert_eq!(reply.header("x-drover-model"), Some("gpt-4o-mini"));
    assert_eq!(reply.header("x-request-id"), Some("trace-123"));

    // Upstream got the rewritten model, the provider's key (not the caller's) and the request id.
    assert_eq!(up.calls_to("/v1/chat/completions"), 1);
    let sent = up.last_request().unwrap();
    assert_eq!(sent.json().unwrap()["model"], "gpt-4o-mini");
    assert_eq!(sent.json().unwrap()["messages"][0]["content"], "hello world");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-provider-key"));
    assert_eq!(sent.header("x-request-id"), Some("trace-123"));
}

#[tokio::test]
async fn the_body_is_forwarded_byte_for_byte_except_the_model() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("fast", &["up/real"]).await;
    // Odd spacing, escapes and number formats that a re-serialisation would change.
    let body = r#"{ "messages":[{"role":"user","content":"caf\u00e9 1.50"}], "temperature":1.0, "model" : "fast", "x_extra":{"k":[1e3]} }"#;
    let reply = gw.send("POST", "/v1/chat/completions", body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = up.last_request().unwrap();
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        r#"{ "messages":[{"role":"user","content":"caf\u00e9 1.50"}], "temperature":1.0, "model" : "real", "x_extra":{"k":[1e3]} }"#
    );
}

#[tokio::test]
async fn stream_chat_relays_every_event_and_ends_with_done() {
    let up = MockProvider::openai().stream_chunks(4).start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("fast", &["up/gpt-4o-mini"]).await;

    let reply = gw.chat_stream("fast", "hello world").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("x-drover-model"), Some("gpt-4o-mini"));
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let chunk: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o-mini");
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(text, "mock reply to: hello world");
    assert_eq!(up.last_json().unwrap()["stream"], true);
}

#[tokio::test]
async fn embeddings_completions_and_direct_provider_model_names() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;

    let emb = gw
        .send(
            "POST",
            "/v1/embeddings",
            r#"{"model":"up/text-embedding-3-small","input":["a","b"]}"#,
        )
        .await;
    assert_eq!(emb.status, 200, "{}", emb.text());
    assert_eq!(emb.json()["data"].as_array().unwrap().len(), 2);
    assert_eq!(up.last_json().unwrap()["model"], "text-embedding-3-small");
    assert_eq!(emb.header("x-drover-provider"), Some("up"));

    let comp = gw
        .send(
            "POST",
            "/v1/completions",
            r#"{"model":"up/davinci","prompt":"say hi"}"#,
        )
        .await;
    assert_eq!(comp.status, 200, "{}", comp.text());
    assert_eq!(comp.json()["choices"][0]["text"], "mock reply to: say hi");

    let stream = gw
        .send(
            "POST",
            "/v1/completions",
            r#"{"model":"up/davinci","prompt":"say hi","stream":true}"#,
        )
        .await;
    assert_eq!(stream.events().last().map(String::as_str), Some("[DONE]"));

    let bad = gw
        .send(
            "POST",
            "/v1/embeddings",
            r#"{"model":"up/e","input":"x","stream":true}"#,
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["param"], "stream");

    assert_eq!(
        up.calls_to("/v1/embeddings"),
        1,
        "a refused request never reaches the provider"
    );
}

#[tokio::test]
async fn models_lists_aliases_and_their_targets() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("fast", &["up/small"]).await;
    gw.route("smart", &["up/big", "up/small"]).await;

    let reply = gw.send("GET", "/v1/models", "").await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fast", "smart", "up/big", "up/small"]);
}

#[tokio::test]
async fn async_openai_client_works_against_the_gateway() {
    use async_openai::Client;
    use async_openai::config::OpenAIConfig;
    use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};

    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("fast", &["up/gpt-4o-mini"]).await;

    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", gw.url()))
            .with_api_key("unused"),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model("fast")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hello sdk")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap();
    let answer = client.chat().create(request.clone()).await.unwrap();
    assert_eq!(answer.model, "gpt-4o-mini");
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some("mock reply to: hello sdk")
    );
    assert!(answer.usage.unwrap().total_tokens > 0);

    let mut stream = client.chat().create_stream(request).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(t) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            text.push_str(&t);
        }
    }
    assert_eq!(text, "mock reply to: hello sdk");

    let models = client.models().list().await.unwrap();
    assert!(models.data.iter().any(|m| m.id == "fast"));
}

#[tokio::test]
async fn responses_api_is_relayed_and_its_streams_are_checked_and_metered() {
    use drover_tests::Fault;
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| c.usage.flush_interval = std::time::Duration::from_millis(20))
        .start()
        .await;
    gw.provider_kind("up", drover_proto::pb::ProviderKind::Openai, &up.base_url())
        .await;
    gw.route("r", &["up/gpt-4.1"]).await;

    let whole = r#"{"id":"resp_1","object":"response","status":"completed","model":"gpt-4.1","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"hi"}]}],"usage":{"input_tokens":11,"output_tokens":2,"total_tokens":13}}"#;
    up.script(vec![Fault::replay(200, "application/json", whole)]);
    let reply = gw
        .send("POST", "/v1/responses", r#"{"model":"r","input":"hello"}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), whole);
    assert_eq!(up.last_request().unwrap().path, "/v1/responses");
    assert_eq!(up.last_json().unwrap()["model"], "gpt-4.1");

    let stream = "event: response.created\ndata: {\"type\":\"response.created\"}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n";
    up.script(vec![Fault::replay(200, "text/event-stream", stream)]);
    let reply = gw
        .send(
            "POST",
            "/v1/responses",
            r#"{"model":"r","input":"hello","stream":true}"#,
        )
        .await;
    assert_eq!(reply.text(), stream, "relayed as is");

    // Cut before response.completed: the caller gets an error event.
    let cut = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n";
    up.script(vec![Fault::replay(200, "text/event-stream", cut)]);
    let reply = gw
        .send(
            "POST",
            "/v1/responses",
            r#"{"model":"r","input":"hello","stream":true}"#,
        )
        .await;
    let names: Vec<String> = reply.named_events().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["response.created", "error"], "{}", reply.text());

    let t = gw.wait_for_usage(3).await;
    assert_eq!(t.requests, 3, "{t:?}");
    // 11 + 5 from the provider; the cut stream is estimated from its 44-byte request (11).
    assert_eq!((t.input_tokens, t.output_tokens), (11 + 5 + 11, 2 + 1), "{t:?}");
    assert_eq!(t.failed, 1);
}
