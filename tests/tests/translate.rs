//! Every SDK to every provider: the same cases for each provider kind, with OpenAI and
//! Anthropic callers, against the mock speaking each provider's native format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use drover_proto::pb::{ProviderKind, ResponsesApi};
use drover_tests::mock::MockBuilder;
use drover_tests::{Fault, Gateway, MockProvider};
use serde_json::{Value, json};

async fn setup(mock: MockBuilder, kind: ProviderKind) -> (Gateway, MockProvider) {
    setup_responses(mock, kind, ResponsesApi::Unspecified).await
}

/// [`setup`] with a provider that gets Responses API calls as `responses_api` says.
async fn setup_responses(
    mock: MockBuilder,
    kind: ProviderKind,
    responses_api: ResponsesApi,
) -> (Gateway, MockProvider) {
    let up = mock.start().await;
    let gw = Gateway::builder().start().await;
    gw.provider_responses("up", kind, &up.base_url(), responses_api)
        .await;
    let model = match kind {
        ProviderKind::Anthropic => "claude-sonnet-4-5",
        ProviderKind::Gemini => "gemini-2.5-flash",
        ProviderKind::Azure => "my-deployment",
        _ => "gpt-4o-mini",
    };
    gw.route("m", &[&format!("up/{model}")]).await;
    (gw, up)
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }}])
}

fn weather_tool_anthropic() -> Value {
    json!([{
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }])
}

/// Text of an OpenAI stream, and the tool calls assembled from its deltas.
fn openai_stream(reply: &drover_tests::Reply) -> (String, Vec<(String, String)>, Option<String>) {
    let events = reply.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        reply.text()
    );
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if calls.len() <= index {
                calls.resize(index + 1, (String::new(), String::new()));
            }
            if let Some(name) = call["function"]["name"].as_str() {
                calls[index].0.push_str(name);
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                calls[index].1.push_str(args);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    (text, calls, finish)
}

/// Text and tool uses of an Anthropic stream, checking its event grammar.
fn anthropic_stream(reply: &drover_tests::Reply) -> (String, Vec<(String, String)>, Option<String>) {
    let events = reply.named_events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    let mut text = String::new();
    let mut tools: Vec<(String, String)> = Vec::new();
    let mut stop = None;
    for (name, data) in &events {
        match name.as_str() {
            "content_block_start" if data["content_block"]["type"] == "tool_use" => {
                tools.push((
                    data["content_block"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            }
            "content_block_delta" => match data["delta"]["type"].as_str() {
                Some("text_delta") => text.push_str(data["delta"]["text"].as_str().unwrap()),
                Some("input_json_delta") => tools
                    .last_mut()
                    .unwrap()
                    .1
                    .push_str(data["delta"]["partial_json"].as_str().unwrap()),
                _ => {}
            },
            "message_delta" => stop = data["delta"]["stop_reason"].as_str().map(str::to_owned),
            _ => {}
        }
    }
    (text, tools, stop)
}

macro_rules! provider_suite {
    ($($name:ident: $mock:expr, $kind:expr;)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn openai_caller_gets_a_chat_completion() {
                let (gw, up) = setup($mock, $kind).await;
                let reply = gw.chat("m", "hello world").await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let body = reply.json();
                assert_eq!(body["object"], "chat.completion");
                assert_eq!(body["choices"][0]["message"]["role"], "assistant");
                assert_eq!(body["choices"][0]["message"]["content"], "mock reply to: hello world");
                assert_eq!(body["choices"][0]["finish_reason"], "stop");
                assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{body}");
                assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{body}");
                assert_eq!(reply.header("x-drover-provider"), Some("up"));
                assert_eq!(up.calls(), 1);
            }

            #[tokio::test]
            async fn openai_caller_streams() {
                let (gw, _up) = setup($mock, $kind).await;
                let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                                  "messages": [{"role": "user", "content": "hello world"}]});
                let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let (text, calls, finish) = openai_stream(&reply);
                assert_eq!(text, "mock reply to: hello world");
                assert!(calls.is_empty());
                assert_eq!(finish.as_deref(), Some("stop"));
                let usage = reply.events().iter().rev().nth(1).map(|e| serde_json::from_str::<Value>(e).unwrap()).unwrap();
                assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
            }

            #[tokio::test]
            async fn openai_caller_gets_tool_calls_whole_and_streamed() {
                let (gw, _up) = setup($mock, $kind).await;
                for stream in [false, true] {
                    let body = json!({"model": "m", "stream": stream, "tools": weather_tool_openai(),
                                      "messages": [{"role": "user", "content": "weather in Paris?"}]});
                    let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    let (calls, finish) = if stream {
                        let (_, calls, finish) = openai_stream(&reply);
                        (calls, finish)
                    } else {
                        let body = reply.json();
                        let calls = body["choices"][0]["message"]["tool_calls"].as_array().unwrap().iter()
                            .map(|c| {
                                assert_eq!(c["type"], "function");
                                assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()));
                                (c["function"]["name"].as_str().unwrap().to_owned(),
                                 c["function"]["arguments"].as_str().unwrap().to_owned())
                            })
                            .collect();
                        (calls, body["choices"][0]["finish_reason"].as_str().map(str::to_owned))
                    };
                    assert_eq!(calls.len(), 1, "stream={stream}");
                    assert_eq!(calls[0].0, "get_weather");
                    let args: Value = serde_json::from_str(&calls[0].1).unwrap();
                    assert!(args.is_object(), "{args}");
                    assert_eq!(finish.as_deref(), Some("tool_calls"));
                }
            }

            #[tokio::test]
            async fn openai_caller_sends_a_tool_result_back() {
                let (gw, up) = setup($mock, $kind).await;
                let body = json!({"model": "m", "tools": weather_tool_openai(), "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
                ]});
                let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                assert_eq!(reply.json()["choices"][0]["message"]["content"], "mock reply to: sunny");
                let sent = String::from_utf8_lossy(&up.last_request().unwrap().body).into_owned();
                assert!(sent.contains("sunny") && sent.contains("Paris") && sent.contains("You are terse."), "{sent}");
            }

            #[tokio::test]
            async fn anthropic_caller_gets_a_message() {
                let (gw, up) = setup($mock, $kind).await;
                let reply = gw.message("m", "hello world", false).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let body = reply.json();
                assert_eq!(body["type"], "message");
                assert_eq!(body["role"], "assistant");
                assert_eq!(body["content"][0]["type"], "text");
                assert_eq!(body["content"][0]["text"], "mock reply to: hello world");
                assert_eq!(body["stop_reason"], "end_turn");
                assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0, "{body}");
                assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0, "{body}");
                assert_eq!(up.calls(), 1);
            }

            #[tokio::test]
            async fn anthropic_caller_streams() {
                let (gw, _up) = setup($mock, $kind).await;
                let reply = gw.message("m", "hello world", true).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                let (text, tools, stop) = anthropic_stream(&reply);
                assert_eq!(text, "mock reply to: hello world");
                assert!(tools.is_empty());
                assert_eq!(stop.as_deref(), Some("end_turn"));
            }

            #[tokio::test]
            async fn anthropic_caller_gets_tool_use_whole_and_streamed() {
                let (gw, _up) = setup($mock, $kind).await;
                for stream in [false, true] {
                    let body = json!({"model": "m", "max_tokens": 256, "stream": stream, "tools": weather_tool_anthropic(),
                                      "messages": [{"role": "user", "content": "weather in Paris?"}]});
                    let reply = gw.send_to(&gw.url(), "POST", "/v1/messages", &[("anthropic-version", "2023-06-01")], body.to_string()).await;
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    let (tools, stop) = if stream {
                        let (_, tools, stop) = anthropic_stream(&reply);
                        (tools, stop)
                    } else {
                        let body = reply.json();
                        let tools = body["content"].as_array().unwrap().iter()
                            .filter(|b| b["type"] == "tool_use")
                            .map(|b| (b["name"].as_str().unwrap().to_owned(), b["input"].to_string()))
                            .collect();
                        (tools, body["stop_reason"].as_str().map(str::to_owned))
                    };
                    assert_eq!(tools.len(), 1, "stream={stream}: {}", reply.text());
                    assert_eq!(tools[0].0, "get_weather");
                    assert!(serde_json::from_str::<Value>(&tools[0].1).unwrap().is_object());
                    assert_eq!(stop.as_deref(), Some("tool_use"));
                }
            }

            #[tokio::test]
            async fn upstream_rate_limits_and_failures_reach_each_caller_in_its_format() {
                let (gw, up) = setup($mock, $kind).await;
                up.set_default(Fault::Status(429).with_retry_after(0));
                let reply = gw.chat("m", "x").await;
                assert_eq!(reply.status, 429, "{}", reply.text());
                assert!(reply.json()["error"]["message"].is_string());
                up.set_default(Fault::Status(500));
                let reply = gw.message("m", "x", false).await;
                assert_eq!(reply.status, 502, "{}", reply.text());
                assert_eq!(reply.json()["type"], "error");
                assert!(reply.json()["error"]["type"].is_string());
                up.set_default(Fault::Status(400).with_message("bad thing"));
                for reply in [gw.chat("m", "x").await, gw.message("m", "x", false).await] {
                    assert_eq!(reply.status, 400, "{}", reply.text());
                    assert!(reply.text().contains("bad thing"), "{}", reply.text());
                }
            }
        }
    )*};
}

provider_suite! {
    openai: MockProvider::openai(), ProviderKind::Openai;
    anthropic: MockProvider::anthropic(), ProviderKind::Anthropic;
    gemini: MockProvider::gemini(), ProviderKind::Gemini;
    azure: MockProvider::azure(), ProviderKind::Azure;
}

#[tokio::test]
async fn anthropic_overload_reaches_an_openai_caller_as_503_and_back() {
    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    up.set_default(Fault::Status(529));
    let reply = gw.chat("m", "x").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    let body = reply.json();
    assert!(body["error"]["message"].is_string(), "OpenAI-shaped: {body}");
    assert!(body.get("type").is_none());

    let (gw, up) = setup(MockProvider::openai(), ProviderKind::Openai).await;
    up.set_default(Fault::Status(503));
    let reply = gw.message("m", "x", false).await;
    assert_eq!(reply.status, 529, "{}", reply.text());
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn untranslatable_fields_are_reported_and_refused_when_strict() {
    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    let body =
        json!({"model": "m", "logprobs": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let reply = gw.send("POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let dropped = reply
        .header("x-drover-dropped")
        .expect("dropped features reported");
    assert!(dropped.split(',').any(|f| f == "logprobs"), "{dropped}");
    assert_eq!(up.calls(), 1);

    let reply = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/chat/completions",
            &[("x-drover-strict", "true")],
            body,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "untranslatable");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("logprobs")
    );
    assert_eq!(
        up.calls(),
        1,
        "a strict request that cannot be translated is never sent"
    );

    // Nothing dropped: no header, and strict changes nothing.
    let plain = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let reply = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/chat/completions",
            &[("x-drover-strict", "true")],
            plain,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-drover-dropped"), None);
}

#[tokio::test]
async fn a_translated_stream_cut_midway_ends_with_an_error_event_in_the_callers_format() {
    let (gw, up) = setup(MockProvider::openai(), ProviderKind::Openai).await;
    up.script(vec![Fault::CutStream { after_chunks: 2 }]);
    let reply = gw.message("m", "hello there my friend", true).await;
    assert_eq!(reply.status, 200);
    let names: Vec<String> = reply.named_events().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("message_start"),
        "{names:?}"
    );
    assert_eq!(names.last().map(String::as_str), Some("error"), "{names:?}");
    assert!(!names.iter().any(|n| n == "message_stop"), "{names:?}");

    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    up.script(vec![Fault::CutStream { after_chunks: 2 }]);
    let reply = gw.chat_stream("m", "hello there my friend").await;
    let events = reply.events();
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
}

#[tokio::test]
async fn count_tokens_goes_to_anthropic_or_is_estimated() {
    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]}).to_string();
    let headers = [("anthropic-version", "2023-06-01")];
    let reply = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/messages/count_tokens",
            &headers,
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(reply.header("x-drover-estimated"), None);
    assert_eq!(up.calls_to("/v1/messages/count_tokens"), 1);
    assert_eq!(up.last_json().unwrap()["model"], "claude-sonnet-4-5");

    let (gw, up) = setup(MockProvider::openai(), ProviderKind::Openai).await;
    let reply = gw
        .send_to(&gw.url(), "POST", "/v1/messages/count_tokens", &headers, body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["input_tokens"], 3, "ceil(11 chars / 4)");
    assert_eq!(reply.header("x-drover-estimated"), Some("true"));
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn openai_caller_history_reaches_anthropic_faithfully() {
    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    let body = json!({"model": "m", "max_tokens": 100, "stop": ["END"], "temperature": 0.2, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]},
        {"role": "assistant", "content": "checking",
         "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig-abc"}],
         "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}},
            {"id": "call_b", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":2}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "one"},
        {"role": "tool", "tool_call_id": "call_b", "content": "two"}
    ], "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]});
    let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = up.last_json().unwrap();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    assert!(sent["system"].to_string().contains("Be brief."), "{sent}");
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{sent}");
    assert_eq!(messages[0]["content"][1]["type"], "image");
    assert_eq!(
        messages[0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );
    let assistant = messages[1]["content"].as_array().unwrap();
    assert_eq!(
        assistant[0],
        json!({"type": "thinking", "thinking": "hmm", "signature": "sig-abc"}),
        "signature kept"
    );
    let uses: Vec<&Value> = assistant.iter().filter(|b| b["type"] == "tool_use").collect();
    assert_eq!(uses.len(), 2, "parallel tool calls");
    assert_eq!(uses[1]["id"], "call_b");
    assert_eq!(uses[1]["input"], json!({"q": 2}));
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2, "both results in one user turn");
    assert_eq!(results[0]["type"], "tool_result");
    assert_eq!(results[0]["tool_use_id"], "call_a");
    assert_eq!(results[1]["tool_use_id"], "call_b");
}

#[tokio::test]
async fn anthropic_caller_reaches_an_openai_provider_faithfully() {
    let (gw, up) = setup(MockProvider::openai(), ProviderKind::Openai).await;
    let body = json!({"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "tool_choice": {"type": "tool", "name": "lookup"},
    "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "found"}, {"type": "text", "text": "thanks"}]}
    ]});
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
    assert!(
        reply
            .header("x-drover-dropped")
            .is_some_and(|d| d.contains("cache_control"))
    );
    let sent = up.last_json().unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "lookup"}})
    );
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
    assert_eq!(sent["messages"][2]["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(sent["messages"][3]["tool_call_id"], "toolu_1");
    assert_eq!(sent["messages"][3]["content"], "found");
}

/// Under `x-drover-strict: true`, `body` (a chat completion) is refused with a 400 naming
/// `feature`, and nothing goes upstream.
async fn refused_under_strict(gw: &Gateway, up: &MockProvider, body: String, feature: &str) {
    let calls = up.calls();
    let reply = gw
        .send_to(
            &gw.url(),
            "POST",
            "/v1/chat/completions",
            &[("x-drover-strict", "true")],
            body,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains(feature), "{}", reply.text());
    assert_eq!(up.calls(), calls);
}

#[tokio::test]
async fn structured_output_reaches_anthropic_as_a_forced_tool_and_comes_back_as_the_text() {
    // A model without native structured output.
    let up = MockProvider::anthropic().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider_kind("up", ProviderKind::Anthropic, &up.base_url())
        .await;
    gw.route("m", &["up/claude-3-7-sonnet-20250219"]).await;
    let schema = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {
        "type": "object",
        "properties": {"input": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["input"]
    }}});
    for (format, stream) in [
        (schema.clone(), false),
        (schema, true),
        (json!({"type": "json_object"}), false),
        (json!({"type": "json_object"}), true),
    ] {
        let body = json!({"model": "m", "stream": stream, "response_format": format,
                          "messages": [{"role": "user", "content": "give me JSON"}]});
        let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-drover-dropped"), None, "{format}");
        let (text, calls, finish) = if stream {
            openai_stream(&reply)
        } else {
            let body = reply.json();
            let message = &body["choices"][0]["message"];
            assert!(message.get("tool_calls").is_none_or(Value::is_null), "{body}");
            (
                message["content"].as_str().unwrap().to_owned(),
                vec![],
                body["choices"][0]["finish_reason"].as_str().map(str::to_owned),
            )
        };
        // What OpenAI would send: the JSON as the content, finish reason stop, no tool call.
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert_eq!(answer["input"], "give me JSON", "{format} stream={stream}");
        assert!(calls.is_empty(), "{calls:?}");
        assert_eq!(finish.as_deref(), Some("stop"), "{format} stream={stream}");
        // Anthropic got one tool with the requested schema, and was made to call it.
        let sent: Value = serde_json::from_slice(&up.last_request().unwrap().body).unwrap();
        assert_eq!(sent["tools"].as_array().unwrap().len(), 1, "{sent}");
        assert_eq!(sent["tools"][0]["name"], "json_output");
        assert_eq!(
            sent["tool_choice"],
            json!({"type": "tool", "name": "json_output"})
        );
        if format["type"] == "json_schema" {
            assert_eq!(sent["tools"][0]["input_schema"]["required"], json!(["input"]));
        }
    }

    // With the caller's own tools beside it, some tool must be called, and the caller's call
    // comes back as a tool call.
    let body = json!({"model": "m", "tools": weather_tool_openai(), "response_format": {"type": "json_object"},
                      "messages": [{"role": "user", "content": "weather in Paris?"}]});
    let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent: Value = serde_json::from_slice(&up.last_request().unwrap().body).unwrap();
    assert_eq!(sent["tool_choice"]["type"], "any", "{sent}");
    assert_eq!(sent["tools"].as_array().unwrap().len(), 2);
    let body = reply.json();
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    // strict: asked of the model, not enforced: named, and refused under x-drover-strict.
    let body = json!({"model": "m", "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": true, "schema": {"type": "object", "properties": {}}}},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let reply = gw.send("POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-dropped"), Some("response_format.strict"));
    refused_under_strict(&gw, &up, body, "response_format.strict").await;
}

/// Claude 4.5 and later get the schema as Anthropic's own structured output: no tool, the
/// JSON in the text, `strict` enforced; keywords it does not enforce are named, and refused
/// under `x-drover-strict`. JSON mode still takes the tool.
#[tokio::test]
async fn structured_output_reaches_newer_claude_natively() {
    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    let format = json!({"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": {
        "type": "object",
        "properties": {"input": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["input", "tags"],
        "additionalProperties": false
    }}});
    for stream in [false, true] {
        let body = json!({"model": "m", "stream": stream, "response_format": format,
                          "messages": [{"role": "user", "content": "give me JSON"}]});
        let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.header("x-drover-dropped"),
            None,
            "strict is enforced natively"
        );
        let (text, calls, finish) = if stream {
            openai_stream(&reply)
        } else {
            let body = reply.json();
            let message = &body["choices"][0]["message"];
            (
                message["content"].as_str().unwrap().to_owned(),
                vec![],
                body["choices"][0]["finish_reason"].as_str().map(str::to_owned),
            )
        };
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert_eq!(answer["input"], "give me JSON", "stream={stream}");
        assert!(calls.is_empty(), "{calls:?}");
        assert_eq!(finish.as_deref(), Some("stop"));
        let sent = up.last_json().unwrap();
        assert!(
            sent.get("tools").is_none() && sent.get("tool_choice").is_none(),
            "{sent}"
        );
        assert_eq!(
            sent["output_config"],
            json!({"format": {"type": "json_schema", "schema": format["json_schema"]["schema"]}})
        );
    }

    // What Anthropic does not enforce is removed, named, and refused under x-drover-strict.
    let body = json!({"model": "m", "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let reply = gw.send("POST", "/v1/chat/completions", body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("x-drover-dropped"),
        Some("response_format.schema.minimum")
    );
    let sent = up.last_json().unwrap();
    assert_eq!(
        sent["output_config"]["format"]["schema"],
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": false})
    );
    refused_under_strict(&gw, &up, body, "response_format.schema.minimum").await;

    // JSON mode has no schema to enforce: the tool, as for older models.
    let body = json!({"model": "m", "response_format": {"type": "json_object"},
                      "messages": [{"role": "user", "content": "give me JSON"}]});
    let reply = gw.send("POST", "/v1/chat/completions", body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(up.last_json().unwrap()["tool_choice"]["name"], "json_output");
    let content = reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&content).unwrap()["input"],
        "give me JSON"
    );
}

/// The Responses API to providers that have it: relayed untouched, stateful fields included,
/// to OpenAI and to Azure's v1 endpoint (the deployment as `model`, no `api-version`), and to
/// an OpenAI-compatible server set to relay; an OpenAI provider set to translate gets chat.
#[tokio::test]
async fn responses_calls_are_relayed_untouched_where_the_provider_has_the_endpoint() {
    let answer = r#"{"id": "resp_67ccd2bed1ec8190", "object": "response", "status": "completed", "model": "gpt-4.1-2025-04-14", "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "hi", "annotations": []}]}], "usage": {"input_tokens": 11, "output_tokens": 2, "total_tokens": 13}}"#;
    let body = r#"{"model":"m","input":"hello","previous_response_id":"resp_prev","store":true}"#;
    for (mock, kind, mode, path, model) in [
        (
            MockProvider::azure(),
            ProviderKind::Azure,
            ResponsesApi::Unspecified,
            "/openai/v1/responses",
            "my-deployment",
        ),
        (
            MockProvider::openai(),
            ProviderKind::Openai,
            ResponsesApi::Unspecified,
            "/v1/responses",
            "gpt-4o-mini",
        ),
        (
            MockProvider::openai(),
            ProviderKind::OpenaiCompatible,
            ResponsesApi::Relay,
            "/v1/responses",
            "gpt-4o-mini",
        ),
    ] {
        let (gw, up) = setup_responses(mock, kind, mode).await;
        up.script(vec![Fault::replay(200, "application/json", answer)]);
        let reply = gw.send("POST", "/v1/responses", body).await;
        assert_eq!(reply.status, 200, "{kind:?}: {}", reply.text());
        assert_eq!(
            reply.text(),
            answer,
            "{kind:?}: the answer is relayed byte for byte"
        );
        let sent = up.last_request().unwrap();
        assert_eq!(sent.path, path, "{kind:?}");
        assert_eq!(
            sent.query, None,
            "{kind:?}: Azure's v1 surface takes no api-version"
        );
        assert_eq!(
            String::from_utf8_lossy(&sent.body),
            body.replace(r#""model":"m""#, &format!(r#""model":"{model}""#)),
            "{kind:?}: only the model is replaced"
        );
        let auth = if kind == ProviderKind::Azure {
            "api-key"
        } else {
            "authorization"
        };
        assert!(sent.header(auth).is_some(), "{kind:?}");

        let stream = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":1,\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n";
        up.script(vec![Fault::replay(200, "text/event-stream", stream)]);
        let reply = gw
            .send(
                "POST",
                "/v1/responses",
                r#"{"model":"m","input":"hello","stream":true}"#,
            )
            .await;
        assert_eq!(
            reply.text(),
            stream,
            "{kind:?}: the stream is relayed byte for byte"
        );
    }

    let (gw, up) = setup_responses(
        MockProvider::openai(),
        ProviderKind::Openai,
        ResponsesApi::Translate,
    )
    .await;
    let reply = gw
        .send("POST", "/v1/responses", r#"{"model":"m","input":"hello"}"#)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(up.last_request().unwrap().path, "/v1/chat/completions");
    assert_eq!(
        reply.json()["output"][0]["content"][0]["text"],
        "mock reply to: hello"
    );
    let reply = gw
        .send(
            "POST",
            "/v1/responses",
            r#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "previous_response_id");
}

/// The Responses API to providers that do not speak it, through the canonical model:
/// Anthropic, Gemini, OpenAI-compatible servers (by default) and Azure deployments set to
/// translate.
#[tokio::test]
async fn responses_calls_reach_every_provider_kind_translated() {
    for (mock, kind, mode) in [
        (
            MockProvider::anthropic(),
            ProviderKind::Anthropic,
            ResponsesApi::Unspecified,
        ),
        (
            MockProvider::gemini(),
            ProviderKind::Gemini,
            ResponsesApi::Unspecified,
        ),
        (
            MockProvider::azure(),
            ProviderKind::Azure,
            ResponsesApi::Translate,
        ),
        (
            MockProvider::openai(),
            ProviderKind::OpenaiCompatible,
            ResponsesApi::Unspecified,
        ),
    ] {
        let (gw, up) = setup_responses(mock, kind, mode).await;
        // A string input with instructions.
        let body = json!({"model": "m", "instructions": "You are terse.", "input": "hello world",
                          "max_output_tokens": 200});
        let reply = gw.send("POST", "/v1/responses", body.to_string()).await;
        assert_eq!(reply.status, 200, "{kind:?}: {}", reply.text());
        let r = reply.json();
        assert_eq!(r["object"], "response", "{r}");
        assert_eq!(r["status"], "completed");
        assert!(r["id"].as_str().unwrap().starts_with("resp_"), "{r}");
        let output = r["output"].as_array().unwrap();
        assert_eq!(output.len(), 1, "{r}");
        assert_eq!(output[0]["type"], "message");
        assert_eq!(output[0]["role"], "assistant");
        assert_eq!(output[0]["content"][0]["type"], "output_text");
        assert_eq!(output[0]["content"][0]["text"], "mock reply to: hello world");
        assert!(r["usage"]["input_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(r["usage"]["output_tokens"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(
            r["usage"]["total_tokens"].as_u64().unwrap(),
            r["usage"]["input_tokens"].as_u64().unwrap() + r["usage"]["output_tokens"].as_u64().unwrap()
        );
        assert!(r["usage"]["input_tokens_details"]["cached_tokens"].is_u64());
        let sent = String::from_utf8_lossy(&up.last_request().unwrap().body).into_owned();
        assert!(
            sent.contains("You are terse.") && sent.contains("hello world"),
            "{kind:?}: {sent}"
        );

        // A tool round trip: the call as a function_call item, its output sent back.
        let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
        let body = json!({"model": "m", "tools": tools, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]}]});
        let reply = gw.send("POST", "/v1/responses", body.to_string()).await;
        assert_eq!(reply.status, 200, "{kind:?}: {}", reply.text());
        let r = reply.json();
        let call = r["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "function_call")
            .unwrap_or_else(|| panic!("{kind:?}: no function_call in {r}"))
            .clone();
        assert_eq!(call["name"], "get_weather");
        assert!(
            serde_json::from_str::<Value>(call["arguments"].as_str().unwrap())
                .unwrap()
                .is_object()
        );
        let call_id = call["call_id"].as_str().unwrap().to_owned();
        let body = json!({"model": "m", "tools": tools, "input": [
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call_id, "output": "sunny"}]});
        let reply = gw.send("POST", "/v1/responses", body.to_string()).await;
        assert_eq!(reply.status, 200, "{kind:?}: {}", reply.text());
        let r = reply.json();
        assert_eq!(
            r["output"][0]["content"][0]["text"], "mock reply to: sunny",
            "{kind:?}: {r}"
        );
        let sent = String::from_utf8_lossy(&up.last_request().unwrap().body).into_owned();
        // Gemini matches results to calls by name; the others by id.
        let by_id = kind != ProviderKind::Gemini;
        assert!(
            sent.contains("sunny") && (!by_id || sent.contains(&call_id)),
            "{kind:?}: {sent}"
        );

        // State this gateway does not keep is refused, naming the field; nothing goes upstream.
        let calls = up.calls();
        for (field, value) in [
            ("previous_response_id", json!("resp_123")),
            ("store", json!(true)),
            ("background", json!(true)),
        ] {
            let mut body = json!({"model": "m", "input": "hi"});
            body[field] = value;
            let reply = gw.send("POST", "/v1/responses", body.to_string()).await;
            assert_eq!(reply.status, 400, "{kind:?} {field}: {}", reply.text());
            assert_eq!(reply.json()["error"]["param"], field, "{}", reply.text());
        }
        assert_eq!(up.calls(), calls, "{kind:?}");

        // Streamed: the event sequence the SDKs expect, each with its sequence number.
        let reply = gw
            .send(
                "POST",
                "/v1/responses",
                json!({"model": "m", "input": "hello world", "stream": true}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{kind:?}: {}", reply.text());
        let events = reply.named_events();
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[..2],
            ["response.created", "response.in_progress"],
            "{kind:?}: {names:?}"
        );
        assert_eq!(names.last(), Some(&"response.completed"), "{kind:?}: {names:?}");
        for required in [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
        ] {
            assert!(
                names.contains(&required),
                "{kind:?}: {required} missing from {names:?}"
            );
        }
        let mut text = String::new();
        for (i, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], i, "{data}");
            if name == "response.output_text.delta" {
                text.push_str(data["delta"].as_str().unwrap());
            }
        }
        assert_eq!(text, "mock reply to: hello world", "{kind:?}");
        let done = &events.last().unwrap().1;
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], text.as_str());
        assert!(
            done["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{done}"
        );

        // Streamed tool calls: argument deltas, then the whole call.
        let body = json!({"model": "m", "stream": true, "tools": tools, "input": "weather in Paris?"});
        let reply = gw.send("POST", "/v1/responses", body.to_string()).await;
        assert_eq!(reply.status, 200, "{kind:?}: {}", reply.text());
        let events = reply.named_events();
        let args_done = events
            .iter()
            .find(|(n, _)| n == "response.function_call_arguments.done")
            .unwrap_or_else(|| panic!("{kind:?}: {events:?}"));
        let args = &args_done.1;
        assert_eq!(args["name"], "get_weather");
        assert!(
            serde_json::from_str::<Value>(args["arguments"].as_str().unwrap())
                .unwrap()
                .is_object()
        );
        assert_eq!(events.last().unwrap().0, "response.completed");

        // Cut upstream: an error event, never a completion.
        up.script(vec![Fault::CutStream { after_chunks: 2 }]);
        let reply = gw
            .send(
                "POST",
                "/v1/responses",
                json!({"model": "m", "input": "hello there my friend", "stream": true}).to_string(),
            )
            .await;
        let names: Vec<String> = reply.named_events().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names.last().map(String::as_str),
            Some("error"),
            "{kind:?}: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n == "response.completed"),
            "{kind:?}: {names:?}"
        );
    }
}

/// A real client crate's Responses API, through an Anthropic route and a Gemini route: a plain
/// call and a tool round trip.
#[tokio::test]
async fn async_openai_responses_client_works_through_anthropic_and_gemini() {
    use async_openai::Client;
    use async_openai::config::OpenAIConfig;
    use async_openai::types::responses::{
        CreateResponseArgs, Function, Input, InputItem, OutputContent, ResponseEvent, Status, ToolDefinition,
    };

    for (mock, kind) in [
        (MockProvider::anthropic(), ProviderKind::Anthropic),
        (MockProvider::gemini(), ProviderKind::Gemini),
    ] {
        let (gw, _up) = setup(mock, kind).await;
        let client = Client::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", gw.url()))
                .with_api_key("unused"),
        );
        let request = CreateResponseArgs::default()
            .model("m")
            .instructions("You are terse.")
            .input(Input::Text("hello sdk".into()))
            .build()
            .unwrap();
        let answer = client.responses().create(request).await.unwrap();
        assert_eq!(answer.status, Status::Completed, "{kind:?}");
        let text = answer
            .output
            .iter()
            .find_map(|o| match o {
                OutputContent::Message(m) => serde_json::to_value(&m.content[0]).ok(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{kind:?}: no message in {:?}", answer.output));
        assert_eq!(text["text"], "mock reply to: hello sdk", "{kind:?}");
        assert!(answer.usage.unwrap().total_tokens > 0);

        let weather = ToolDefinition::Function(Function {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            strict: false,
            description: Some("Weather for a city".into()),
        });
        let request = CreateResponseArgs::default()
            .model("m")
            .tools(vec![weather.clone()])
            .input(Input::Text("weather in Paris?".into()))
            .build()
            .unwrap();
        let answer = client.responses().create(request).await.unwrap();
        let call = answer
            .output
            .iter()
            .find_map(|o| match o {
                OutputContent::FunctionCall(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{kind:?}: no function call in {:?}", answer.output));
        assert_eq!(call.name, "get_weather");
        let request = CreateResponseArgs::default()
            .model("m")
            .tools(vec![weather])
            .input(Input::Items(vec![
                InputItem::Custom(json!({"role": "user", "content": "weather in Paris?"})),
                InputItem::Custom(json!({"type": "function_call", "call_id": call.call_id,
                                         "name": call.name, "arguments": call.arguments})),
                InputItem::Custom(json!({"type": "function_call_output", "call_id": call.call_id,
                                         "output": "sunny"})),
            ]))
            .build()
            .unwrap();
        let answer = client.responses().create(request).await.unwrap();
        let text = answer
            .output
            .iter()
            .find_map(|o| match o {
                OutputContent::Message(m) => serde_json::to_value(&m.content[0]).ok(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{kind:?}: no message in {:?}", answer.output));
        assert_eq!(text["text"], "mock reply to: sunny", "{kind:?}");

        // Streamed: every event parses as the client's own types, in order, to a completion.
        let request = CreateResponseArgs::default()
            .model("m")
            .input(Input::Text("hello stream".into()))
            .stream(true)
            .build()
            .unwrap();
        let mut stream = client.responses().create_stream(request).await.unwrap();
        let (mut deltas, mut completed) = (String::new(), false);
        // The client reads until it sees the completion (Responses streams send no [DONE]; it
        // reports the end of the connection after it as an error).
        while let Some(event) = futures_util::StreamExt::next(&mut stream).await {
            match event.unwrap_or_else(|e| panic!("{kind:?}: {e}")) {
                ResponseEvent::ResponseOutputTextDelta(d) => deltas.push_str(&d.delta),
                ResponseEvent::ResponseCompleted(_) => {
                    completed = true;
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(deltas, "mock reply to: hello stream", "{kind:?}");
        assert!(completed, "{kind:?}");
    }
}

/// Extended thinking with tool use over several Responses turns: the thinking comes out as a
/// `reasoning` item whose `encrypted_content` carries the blocks and signatures, and given back
/// as input it reaches Anthropic exactly as Anthropic sent it, before the tool call.
#[tokio::test]
async fn thinking_signatures_survive_a_responses_round_trip_to_anthropic() {
    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    let signature = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgwfjK7Xq5JZ3Zm5Hr0iMLvNb9Qq7fM5XBlR";
    let answer = json!({
        "id": "msg_01Think", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "The user wants Paris weather; call the tool.", "signature": signature},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "tool_use", "id": "toolu_01W", "name": "get_weather", "input": {"city": "Paris"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 50, "output_tokens": 40}
    });
    up.script(vec![Fault::replay(200, "application/json", answer.to_string())]);
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let first = json!({"model": "m", "tools": tools, "reasoning": {"effort": "medium"},
                       "input": "weather in Paris?"});
    let reply = gw.send("POST", "/v1/responses", first.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let output = reply.json()["output"].as_array().unwrap().clone();
    assert_eq!(output[0]["type"], "reasoning", "{output:?}");
    assert_eq!(
        output[0]["summary"][0]["text"],
        "The user wants Paris weather; call the tool."
    );
    assert!(
        output[0]["encrypted_content"]
            .as_str()
            .unwrap()
            .starts_with("drv1_")
    );
    assert_eq!(output[1]["type"], "function_call");

    // The next turn gives every output item back, with the tool's result.
    let mut input = vec![json!({"role": "user", "content": "weather in Paris?"})];
    input.extend(output.iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": "toolu_01W", "output": "sunny"}));
    let second = json!({"model": "m", "tools": tools, "reasoning": {"effort": "medium"}, "input": input});
    let reply = gw.send("POST", "/v1/responses", second.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-dropped"), None);
    let sent = up.last_json().unwrap();
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": "The user wants Paris weather; call the tool.", "signature": signature},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "tool_use", "id": "toolu_01W", "name": "get_weather", "input": {"city": "Paris"}}
        ]}),
        "{sent}"
    );
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");

    // Streamed: the signature arrives as a delta and goes out in the finished item.
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_01S", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Call the tool."}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": signature}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ];
    let stream: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect();
    up.script(vec![Fault::replay(200, "text/event-stream", stream)]);
    let mut streamed = first.clone();
    streamed["stream"] = json!(true);
    let reply = gw.send("POST", "/v1/responses", streamed.to_string()).await;
    let done = reply.named_events();
    let (_, completed) = done.last().unwrap();
    assert_eq!(completed["type"], "response.completed", "{}", reply.text());
    let item = &completed["response"]["output"][0];
    assert_eq!(item["type"], "reasoning");
    let mut input = vec![json!({"role": "user", "content": "weather in Paris?"})];
    input.extend(
        completed["response"]["output"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    input.push(json!({"type": "function_call_output", "call_id": "toolu_02", "output": "sunny"}));
    let third = json!({"model": "m", "tools": tools, "reasoning": {"effort": "medium"}, "input": input});
    let reply = gw.send("POST", "/v1/responses", third.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = up.last_json().unwrap();
    assert_eq!(
        sent["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "Call the tool.", "signature": signature}),
        "{sent}"
    );

    // OpenAI's own reasoning items carry nothing another provider can use: dropped, named.
    let foreign = json!({"model": "m", "input": [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAABoOpenAI"},
        {"role": "user", "content": "hi"}]});
    let reply = gw.send("POST", "/v1/responses", foreign.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-dropped"), Some("reasoning"));

    // Gemini's thought signatures mean nothing to Anthropic (a later turn may fail over there):
    // the thinking is shown, not carried.
    let (gw, up) = setup(MockProvider::gemini(), ProviderKind::Gemini).await;
    let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Think it through.", "thought": true, "thoughtSignature": "CiQBVKhc7gemini"},
            {"text": "Paris is sunny."}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4, "thoughtsTokenCount": 20, "totalTokenCount": 33},
        "modelVersion": "gemini-2.5-flash", "responseId": "r1"});
    up.script(vec![Fault::replay(200, "application/json", answer.to_string())]);
    let reply = gw.send("POST", "/v1/responses", first.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let output = reply.json()["output"].clone();
    assert_eq!(output[0]["type"], "reasoning", "{output}");
    assert_eq!(output[0]["summary"][0]["text"], "Think it through.");
    assert!(output[0].get("encrypted_content").is_none(), "{output}");
}

/// A translated Responses stream is metered with the provider's own counts, exactly once; a
/// cut one is billed for what was produced.
#[tokio::test]
async fn translated_responses_streams_are_metered_with_the_providers_counts() {
    let (gw, _up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    let reply = gw
        .send(
            "POST",
            "/v1/responses",
            json!({"model": "m", "input": "count me", "stream": true}).to_string(),
        )
        .await;
    let events = reply.named_events();
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "response.completed");
    let total = gw.wait_for_usage(1).await;
    assert_eq!(total.requests, 1);
    assert_eq!(
        total.input_tokens,
        done["response"]["usage"]["input_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        total.output_tokens,
        done["response"]["usage"]["output_tokens"].as_u64().unwrap()
    );
    assert!(total.output_tokens > 0);

    let (gw, up) = setup(MockProvider::anthropic(), ProviderKind::Anthropic).await;
    up.script(vec![Fault::CutStream { after_chunks: 3 }]);
    let reply = gw
        .send(
            "POST",
            "/v1/responses",
            json!({"model": "m", "input": "a longer prompt to cut short", "stream": true}).to_string(),
        )
        .await;
    assert_eq!(reply.named_events().last().unwrap().0, "error");
    let total = gw.wait_for_usage(1).await;
    assert_eq!(total.requests, 1);
    assert!(total.input_tokens > 0 && total.output_tokens > 0, "{total:?}");
}
