//! Bad input gets the right status and an OpenAI-shaped error, and never reaches a provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use drover_tests::{Gateway, MockProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway() -> (Gateway, MockProvider) {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| c.max_body_bytes = 64 * 1024)
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/one"]).await;
    (gw, up)
}

fn assert_openai_error(reply: &drover_tests::Reply, status: u16) -> serde_json::Value {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-request-id").is_some());
    let body = reply.json();
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let (gw, up) = gateway().await;
    for body in [
        "{",
        "not json",
        "[]",
        "",
        r#"{"model":"m"} trailing"#,
        r#"{"model":"m","messages":[}"#,
    ] {
        let reply = gw.send("POST", "/v1/chat/completions", body).await;
        let err = assert_openai_error(&reply, 400);
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn a_duplicate_model_key_is_a_400() {
    let (gw, up) = gateway().await;
    let reply = gw
        .send(
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m","messages":[],"model":"up/other"}"#,
        )
        .await;
    let err = assert_openai_error(&reply, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key \"model\"")
    );
    // Escaped spelling of the same key is the same key.
    let reply = gw
        .send(
            "POST",
            "/v1/chat/completions",
            r#"{"model":"m","mod\u0065l":"up/other"}"#,
        )
        .await;
    assert_openai_error(&reply, 400);
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn missing_or_mistyped_model_and_stream_are_400s_naming_the_param() {
    let (gw, up) = gateway().await;
    for (body, param) in [
        (r#"{"messages":[]}"#, "model"),
        (r#"{"model":42}"#, "model"),
        (r#"{"model":""}"#, "model"),
        (r#"{"model":"m","stream":"yes"}"#, "stream"),
    ] {
        let err = assert_openai_error(&gw.send("POST", "/v1/chat/completions", body).await, 400);
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn an_unknown_model_is_a_404() {
    let (gw, up) = gateway().await;
    for model in ["nope", "unknown-provider/x", "up/"] {
        let err = assert_openai_error(&gw.chat(model, "x").await, 404);
        assert_eq!(err["error"]["code"], "model_not_found", "{model}");
    }
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn a_huge_body_is_a_413() {
    let (gw, up) = gateway().await;
    let huge = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100 * 1024)
    );
    let err = assert_openai_error(&gw.send("POST", "/v1/chat/completions", huge.clone()).await, 413);
    assert_eq!(err["error"]["code"], "request_too_large");

    // Without a content-length (chunked), the limit applies while reading.
    let stream = futures_util::stream::iter(
        huge.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url()))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn a_declared_huge_body_is_refused_before_it_is_sent() {
    let (gw, up) = gateway().await;
    // Declare 1 GiB and send only the headers: the answer must come without the body.
    let mut conn = tokio::net::TcpStream::connect(gw.dps[0].addr()).await.unwrap();
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_openai_errors() {
    let (gw, _up) = gateway().await;
    let err = assert_openai_error(&gw.send("POST", "/v1/nope", "{}").await, 404);
    assert_eq!(err["error"]["code"], "unknown_url");
    let err = assert_openai_error(&gw.send("GET", "/v1/chat/completions", "").await, 405);
    assert_eq!(err["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn upstream_errors_never_show_credentials_or_addresses() {
    let up = MockProvider::openai()
        .default_fault(drover_tests::Fault::Status(500))
        .start()
        .await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    let reply = gw.chat("up/x", "x").await;
    let err = assert_openai_error(&reply, 502);
    let text = err.to_string();
    assert!(!text.contains("sk-test-provider-key"));
    assert!(!text.contains(&up.addr().port().to_string()));
    assert!(!text.contains("127.0.0.1"));
}
