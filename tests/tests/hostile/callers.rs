//! Hostile callers: connections, headers and bodies that try to hold memory or sockets, and
//! requests a browser can be made to send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use drover_tests::gateway::rss_bytes;
use drover_tests::{Gateway, MockProvider, chat_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Generous bound for anything the gateway must do "soon"; tests finish as soon as it happens.
const PATIENCE: Duration = Duration::from_secs(10);

async fn gateway_with(
    tweak: impl Fn(&mut drover_dataplane::Config) + Send + 'static,
) -> (Gateway, MockProvider) {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().configure(tweak).start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/one"]).await;
    (gw, up)
}

/// Reads until the peer closes the connection (or resets it); `None` if it is still open
/// after `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends raw bytes and reads one HTTP/1.1 response head and body (the gateway answers with
/// a content-length, or closes).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    read_response(&mut conn).await
}

async fn read_response(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|len| body.len() >= len) {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => panic!("no complete response in time; got {text:?}"),
            Ok(Ok(0) | Err(_)) => return text,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn post_head(path: &str, content_type: &str, content_length: Option<usize>) -> String {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: {content_type}\r\n");
    if let Some(len) = content_length {
        head.push_str(&format!("content-length: {len}\r\n"));
    } else {
        head.push_str("transfer-encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    head
}

fn body_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

#[tokio::test]
async fn silent_and_slowloris_connections_are_closed_after_the_header_timeout() {
    let (gw, up) = gateway_with(|c| c.listener.header_read_timeout = Duration::from_millis(500)).await;
    let addr = gw.dps[0].addr();
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(addr).await.unwrap());
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
            .await
            .unwrap();
        slow.push(conn);
    }
    // The slow ones keep sending header bytes, one line at a time, well inside any per-read timeout.
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        let mut open = slow;
        for i in 0..50 {
            if open.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut still = Vec::new();
            for mut conn in open {
                if conn
                    .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                    .await
                    .is_ok()
                {
                    still.push(conn);
                }
            }
            open = still;
        }
        open
    });
    for conn in &mut silent {
        assert!(
            closed_within(conn, PATIENCE).await.is_some(),
            "a connection that sends nothing is closed"
        );
    }
    let slow = dribble.await.unwrap();
    // Whatever the dribbler still held: it must be closed by now too.
    for mut conn in slow {
        let left = PATIENCE.saturating_sub(started.elapsed());
        let got = closed_within(&mut conn, left).await;
        assert!(got.is_some(), "a connection dribbling headers is closed");
    }
    assert!(
        gw.metric("drover_connections_closed_total{reason=\"header_timeout\"}")
            .await
            >= 100
    );
    assert_eq!(up.calls(), 0);
    // And the gateway still serves.
    assert_eq!(gw.chat("m", "hi").await.status, 200);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_are_not() {
    let up = MockProvider::openai()
        .latency(Duration::from_millis(1500))
        .start()
        .await;
    let gw = Gateway::builder()
        .configure(|c| c.listener.idle_timeout = Duration::from_millis(700))
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/one"]).await;
    let addr = gw.dps[0].addr();

    // Two requests on one keep-alive connection, the second after a short pause: kept open.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n";
    conn.write_all(get).await.unwrap();
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.write_all(get).await.unwrap();
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Then idle: closed by the gateway.
    let rest = closed_within(&mut conn, PATIENCE).await;
    assert_eq!(rest.as_deref(), Some(&b""[..]), "closed without another answer");

    // A request whose answer takes longer than the idle timeout is not idle.
    let body = chat_body("m", "slow", false);
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{}{body}",
        post_head("/v1/chat/completions", "application/json", Some(body.len()))
    );
    busy.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut busy).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        gw.metric("drover_connections_closed_total{reason=\"idle\"}")
            .await
            >= 1
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_a_503_and_the_cap_frees_up() {
    let (gw, _up) = gateway_with(|c| c.listener.max_connections = 20).await;
    let addr = gw.dps[0].addr();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Connections are accepted in order, so the next one is the twenty-first.
    let body = chat_body("m", "hi", false);
    let request = format!(
        "{}{body}",
        post_head("/v1/chat/completions", "application/json", Some(body.len()))
    );
    let refused = raw_exchange(addr, request.as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert_eq!(body_json(&refused)["error"]["code"], "overloaded");
    // A well-formed answer: exactly the body its content-length declares, so an HTTP client
    // reads the 503 instead of failing on a truncated message.
    let (head, body) = refused.split_once("\r\n\r\n").unwrap();
    let declared = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap();
    assert_eq!(declared, body.len().to_string(), "{refused}");

    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = raw_exchange(addr, request.as_bytes()).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cap frees up once connections close: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.metric("drover_connections_refused_total").await >= 1);
}

#[tokio::test]
async fn a_stalled_body_gets_a_408_and_reaches_no_provider() {
    let (gw, up) = gateway_with(|c| c.body_read_timeout = Duration::from_millis(500)).await;
    let mut conn = TcpStream::connect(gw.dps[0].addr()).await.unwrap();
    conn.write_all(post_head("/v1/chat/completions", "application/json", Some(100)).as_bytes())
        .await
        .unwrap();
    conn.write_all(b"{\"model\":\"m\",").await.unwrap();
    let response = read_response(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    let err = body_json(&response);
    assert_eq!(err["error"]["code"], "request_timeout");
    assert_eq!(up.calls(), 0);
    assert_eq!(
        gw.metric("drover_request_bodies_refused_total{reason=\"timeout\"}")
            .await,
        1
    );
}

/// Uploads that stall before their last byte hold their reservation; once the buffered
/// bodies reach the budget, further requests get a 503 with `retry-after` instead of memory,
/// while small requests keep the last eighth of the budget.
#[tokio::test]
async fn buffered_bodies_are_bounded_by_a_global_budget_and_memory_comes_back() {
    const BODY: usize = 8 << 20;
    const BUDGET: usize = 32 << 20;
    let (gw, up) = gateway_with(|c| {
        c.max_body_bytes = BODY;
        c.max_buffered_body_bytes = BUDGET;
    })
    .await;
    let addr = gw.dps[0].addr();
    let idle = rss_bytes();
    let payload = Bytes::from(vec![b' '; BODY - 1]);

    // Three uploads of 8 MiB − 1 byte, each holding back its last byte, fill the seven
    // eighths of the budget that bodies over 1 MiB may use.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(post_head("/v1/chat/completions", "application/json", Some(BODY)).as_bytes())
            .await
            .unwrap();
        conn.write_all(&payload).await.unwrap();
        held.push(conn);
    }
    let deadline = Instant::now() + PATIENCE;
    while gw.metric("drover_request_body_bytes_buffered").await < 3 * BODY as u64 {
        assert!(Instant::now() < deadline, "the held uploads are counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = rss_bytes();
    assert!(
        peak.saturating_sub(idle) < (BUDGET + (24 << 20)) as u64,
        "held bodies cost about their budget: {} MiB over idle",
        peak.saturating_sub(idle) >> 20
    );
    // Twelve more are refused as soon as their head arrives, before any body byte.
    for _ in 0..12 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(post_head("/v1/chat/completions", "application/json", Some(BODY)).as_bytes())
            .await
            .unwrap();
        let head = read_response(&mut conn).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        assert_eq!(body_json(&head)["error"]["code"], "overloaded");
        held.push(conn);
    }
    assert_eq!(
        gw.metric("drover_request_body_bytes_buffered").await,
        3 * BODY as u64
    );
    assert_eq!(
        gw.metric("drover_request_bodies_refused_total{reason=\"budget\"}")
            .await,
        12
    );
    // The last eighth is kept for small bodies: ordinary requests are still served.
    assert_eq!(gw.chat("m", "still served").await.status, 200);
    let conns = held;

    // The callers go away: the reservations are released and memory comes back.
    drop(conns);
    let deadline = Instant::now() + PATIENCE;
    while gw.metric("drover_request_body_bytes_buffered").await > 0 {
        assert!(
            Instant::now() < deadline,
            "reservations are released when callers leave"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = rss_bytes();
    assert!(
        after.saturating_sub(idle) < 64 << 20,
        "RSS back within 64 MiB of idle: {} MiB over",
        after.saturating_sub(idle) >> 20
    );
    assert_eq!(up.calls(), 1);
    assert_eq!(gw.chat("m", "hi").await.status, 200);
}

#[tokio::test]
async fn a_body_without_a_declared_length_is_counted_as_it_arrives() {
    let (gw, up) = gateway_with(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_buffered_body_bytes = 1 << 20;
    })
    .await;
    let addr = gw.dps[0].addr();
    // One chunked upload holds 900 KB (not yet finished)...
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder
        .write_all(post_head("/v1/chat/completions", "application/json", None).as_bytes())
        .await
        .unwrap();
    let chunk = vec![b' '; 900 * 1024];
    holder
        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
        .await
        .unwrap();
    holder.write_all(&chunk).await.unwrap();
    holder.write_all(b"\r\n").await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while gw.metric("drover_request_body_bytes_buffered").await < 900 * 1024 {
        assert!(Instant::now() < deadline, "the chunk is counted once read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...so a 200 KB request does not fit now.
    let big = chat_body("m", &"x".repeat(200 * 1024), false);
    let reply = gw.send("POST", "/v1/chat/completions", big).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["error"]["code"], "overloaded");
    // Small ones still do.
    assert_eq!(gw.chat("m", "hi").await.status, 200);
    assert_eq!(up.calls(), 1);
    assert!(
        gw.metric("drover_request_bodies_refused_total{reason=\"budget\"}")
            .await
            >= 1
    );
}

#[tokio::test]
async fn only_json_bodies_are_accepted_so_browsers_cannot_send_simple_requests() {
    let (gw, up) = gateway_with(|_| {}).await;
    let addr = gw.dps[0].addr();
    let body = chat_body("m", "hi", false);
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
            let mut head = format!(
                "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n",
                body.len()
            );
            if let Some(ct) = content_type {
                head.push_str(&format!("content-type: {ct}\r\n"));
            }
            let response = raw_exchange(addr, format!("{head}\r\n{body}").as_bytes()).await;
            assert!(
                response.starts_with("HTTP/1.1 415"),
                "{content_type:?} {path}: {response}"
            );
            let err = body_json(&response);
            if anthropic {
                assert_eq!(err["type"], "error", "{err}");
                assert_eq!(err["error"]["type"], "invalid_request_error");
            } else {
                assert_eq!(err["error"]["code"], "unsupported_media_type");
            }
            assert!(
                !response.to_ascii_lowercase().contains("access-control-"),
                "{response}"
            );
        }
    }
    assert_eq!(up.calls(), 0);
    let ok = gw
        .send_to(&gw.url(), "POST", "/v1/chat/completions", &[], body)
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn no_cors_headers_unless_an_origin_is_allowed() {
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nhost: gw\r\norigin: {origin}\r\n\
             access-control-request-method: POST\r\n\
             access-control-request-headers: authorization, content-type\r\ncontent-length: 0\r\n\r\n"
        )
    };
    let post = |origin: &str| {
        let body = chat_body("m", "hi", false);
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\norigin: {origin}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };

    let (closed, _up) = gateway_with(|_| {}).await;
    let addr = closed.dps[0].addr();
    for request in [preflight("https://evil.example"), post("https://evil.example")] {
        let response = raw_exchange(addr, request.as_bytes()).await.to_ascii_lowercase();
        assert!(!response.contains("access-control-"), "{response}");
    }

    let (open, _up) =
        gateway_with(|c| c.cors_origins = vec![http::HeaderValue::from_static("https://app.example")]).await;
    let addr = open.dps[0].addr();
    let allowed = raw_exchange(addr, preflight("https://app.example").as_bytes())
        .await
        .to_ascii_lowercase();
    assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
    assert!(
        allowed.contains("access-control-allow-origin: https://app.example"),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-allow-methods: get,post"),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-allow-headers: authorization, content-type"),
        "{allowed}"
    );
    let other = raw_exchange(addr, preflight("https://evil.example").as_bytes())
        .await
        .to_ascii_lowercase();
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    let answered = raw_exchange(addr, post("https://app.example").as_bytes())
        .await
        .to_ascii_lowercase();
    assert!(answered.starts_with("http/1.1 200"), "{answered}");
    assert!(
        answered.contains("access-control-allow-origin: https://app.example"),
        "{answered}"
    );
    assert!(answered.contains("access-control-expose-headers:"), "{answered}");
    assert!(answered.contains("x-request-id"), "{answered}");
    for name in [
        "x-ratelimit-remaining-requests",
        "anthropic-ratelimit-tokens-reset",
        "x-drover-spend-warning",
    ] {
        assert!(answered.contains(name), "{name} not exposed: {answered}");
    }
}

#[tokio::test]
async fn http2_callers_are_served_through_the_bounded_listener() {
    let (gw, up) = gateway_with(|c| c.listener.idle_timeout = Duration::from_millis(500)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    for _ in 0..3 {
        let req = http::Request::post(format!("{}/v1/chat/completions", gw.url()))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(chat_body(
                "m", "hi", false,
            ))))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(up.calls(), 3);
    // Idle past the timeout: the gateway closes the connection, and the client reconnects.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        gw.metric("drover_connections_closed_total{reason=\"idle\"}")
            .await
            >= 1
    );
    let req = http::Request::post(format!("{}/v1/chat/completions", gw.url()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(chat_body(
            "m", "again", false,
        ))))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 200);
}
