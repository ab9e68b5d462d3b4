//! Hostile upstreams: endless lines, resets after the request was sent, huge and redirected
//! answers, failures that must not multiply cost or open a breaker for everyone.
//!
//! What the scripted mock cannot play is played by [`RawUpstream`], a few lines of raw TCP on
//! 127.0.0.1:0 that counts the requests it read whole and notices when the gateway closes
//! the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use drover_tests::gateway::metric;
use drover_tests::{Fault, Gateway, MockProvider, Reply, chat_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a [`RawUpstream`] does once it has read a whole request.
#[derive(Clone, Debug)]
enum Play {
    /// Resets the connection (RST) without a word.
    Reset,
    /// Writes these bytes (a whole answer) and closes.
    Answer(&'static str),
    /// Answers 200 with a JSON body of `len` bytes, in `content-length` or chunked.
    Huge { len: usize, declared: bool },
    /// Writes these bytes, then says nothing more and keeps the connection open.
    Stall(String),
    /// Writes these bytes, then resets the connection.
    Cut(String),
    /// Answers an event stream whose first line never ends: `data: xxxx…` until the
    /// connection is closed.
    EndlessLine,
}

/// A provider played on raw TCP, one request per connection.
struct RawUpstream {
    addr: SocketAddr,
    /// Requests read whole.
    requests: Arc<AtomicU64>,
    /// Bytes of answer written.
    written: Arc<AtomicU64>,
    /// The gateway closed a connection that was still being answered (or held open).
    closed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";

/// One OpenAI chat chunk event carrying `text`.
fn chunk_event(text: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

impl RawUpstream {
    async fn start(play: Play) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let (r, w, c) = (requests.clone(), written.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (play, r, w, c) = (play.clone(), r.clone(), w.clone(), c.clone());
                tokio::spawn(async move {
                    let mut stream = stream;
                    if read_request(&mut stream).await.is_none() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    if answer(&mut stream, play, &w).await.is_err() {
                        c.store(true, Ordering::SeqCst);
                    }
                });
            }
        });
        RawUpstream {
            addr,
            requests,
            written,
            closed,
            task,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request whole (head and `content-length` body); `None` if the peer went first.
async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        let n = stream.read(&mut piece).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&piece[..n]);
    }
    Some(())
}

/// Writes `bytes` and counts them.
async fn write(stream: &mut TcpStream, written: &AtomicU64, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    Ok(())
}

/// Plays `play` on a connection whose request was read. `Err` when the gateway closed it first.
async fn answer(stream: &mut TcpStream, play: Play, written: &AtomicU64) -> std::io::Result<()> {
    match play {
        Play::Reset => {
            stream.set_zero_linger()?;
            Ok(())
        }
        Play::Answer(bytes) => write(stream, written, bytes.as_bytes()).await,
        Play::Huge { len, declared } => {
            let framing = if declared {
                format!("content-length: {len}")
            } else {
                "transfer-encoding: chunked".to_owned()
            };
            let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\r\n");
            write(stream, written, head.as_bytes()).await?;
            let piece = vec![b' '; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(piece.len());
                if declared {
                    write(stream, written, &piece[..n]).await?;
                } else {
                    write(stream, written, format!("{n:x}\r\n").as_bytes()).await?;
                    write(stream, written, &piece[..n]).await?;
                    write(stream, written, b"\r\n").await?;
                }
                left -= n;
            }
            if !declared {
                write(stream, written, b"0\r\n\r\n").await?;
            }
            Ok(())
        }
        Play::Stall(bytes) => {
            write(stream, written, bytes.as_bytes()).await?;
            // Silent from here on; a read returns when the gateway closes the connection.
            let mut rest = [0u8; 64];
            let _ = stream.read(&mut rest).await;
            Err(std::io::ErrorKind::ConnectionAborted.into())
        }
        Play::Cut(bytes) => {
            write(stream, written, bytes.as_bytes()).await?;
            stream.flush().await?;
            // Let the bytes reach the gateway before the reset discards anything unsent.
            tokio::time::sleep(Duration::from_millis(50)).await;
            stream.set_zero_linger()?;
            Ok(())
        }
        Play::EndlessLine => {
            write(stream, written, SSE_HEAD.as_bytes()).await?;
            write(stream, written, b"data: ").await?;
            let piece = vec![b'x'; 64 << 10];
            loop {
                write(stream, written, &piece).await?;
            }
        }
    }
}

fn failures(metrics: &str, kind: &str) -> u64 {
    metric(
        metrics,
        &format!("drover_upstream_failures_total{{kind=\"{kind}\"}}"),
    )
}

fn error_message(reply: &Reply) -> String {
    reply.json()["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_reset_after_the_request_was_sent_is_not_retried() {
    let resetting = RawUpstream::start(Play::Reset).await;
    let backup = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("raw", &resetting.base_url()).await;
    gw.provider("backup", &backup.base_url()).await;
    gw.route("m", &["raw/a", "backup/b"]).await;

    let reply = gw.chat("m", "an expensive prompt").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "upstream_error");
    assert!(
        error_message(&reply).contains("after the request was sent"),
        "{}",
        reply.text()
    );
    assert_eq!(resetting.requests(), 1, "the provider received the request once");
    assert_eq!(backup.calls(), 0, "nor was it sent anywhere else");
    assert_eq!(failures(&gw.metrics().await, "sent"), 1);
}

#[tokio::test]
async fn a_route_that_allows_it_retries_after_a_reset() {
    let resetting = RawUpstream::start(Play::Reset).await;
    let backup = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("raw", &resetting.base_url()).await;
    gw.provider("backup", &backup.base_url()).await;
    gw.route_retrying_after_send("alone", &["raw/a"]).await;
    gw.route_retrying_after_send("m", &["raw/a", "backup/b"]).await;

    let reply = gw.chat("alone", "hi").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(resetting.requests(), 3, "retried up to --max-attempts");

    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-provider"), Some("backup"));
    assert_eq!(resetting.requests(), 4);
    assert_eq!(failures(&gw.metrics().await, "sent"), 4);
}

#[tokio::test]
async fn a_response_over_the_limit_is_fetched_once() {
    let declared = RawUpstream::start(Play::Huge {
        len: 32 << 20,
        declared: true,
    })
    .await;
    let chunked = RawUpstream::start(Play::Huge {
        len: 32 << 20,
        declared: false,
    })
    .await;
    let gw = Gateway::builder()
        .configure(|c| c.proxy.max_response_bytes = 1 << 20)
        .start()
        .await;
    gw.provider("declared", &declared.base_url()).await;
    gw.provider("chunked", &chunked.base_url()).await;
    gw.route_retrying_after_send("m", &["declared/a", "chunked/b"])
        .await;

    for model in ["declared/a", "chunked/b", "m"] {
        let reply = gw.chat(model, "hi").await;
        assert_eq!(reply.status, 502, "{model}: {}", reply.text());
        assert_eq!(reply.json()["error"]["code"], "upstream_response_too_large");
        assert!(
            error_message(&reply).contains("larger than the limit of 1048576 bytes"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(
        declared.requests(),
        2,
        "fetched once per request, even on a route that retries after sending"
    );
    assert_eq!(chunked.requests(), 1, "the next target is not tried either");
    assert!(
        chunked.written.load(Ordering::SeqCst) < 32 << 20,
        "the gateway stopped reading past the limit"
    );
    assert_eq!(failures(&gw.metrics().await, "too_large"), 3);
}

#[tokio::test]
async fn a_redirect_becomes_a_502_that_says_so() {
    let redirecting = RawUpstream::start(Play::Answer(
        "HTTP/1.1 302 Found\r\nlocation: http://10.9.8.7:8443/internal/v1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ))
    .await;
    let backup = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("moved", &redirecting.base_url()).await;
    gw.provider("backup", &backup.base_url()).await;
    gw.route("m", &["moved/a", "backup/b"]).await;

    let reply = gw.chat("m", "hi").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "upstream_redirect");
    let message = error_message(&reply);
    assert!(message.contains("redirect (status 302)"), "{message}");
    assert!(
        !reply.text().contains("10.9.8.7"),
        "no internal address: {}",
        reply.text()
    );
    assert!(reply.header("location").is_none());
    assert_eq!(redirecting.requests(), 1);
    assert_eq!(backup.calls(), 0);

    let reply = gw.chat_stream("moved/a", "hi").await;
    assert_eq!(reply.status, 502, "streams too: {}", reply.text());
    assert_eq!(failures(&gw.metrics().await, "redirect"), 2);
}

#[tokio::test]
async fn a_stalled_body_obeys_the_upstream_timeout() {
    let stalling = RawUpstream::start(Play::Stall(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"id\":\"chatcmpl-1\","
            .to_owned(),
    ))
    .await;
    let gw = Gateway::builder()
        .configure(|c| {
            c.proxy.upstream_timeout = Duration::from_millis(300);
            c.proxy.request_timeout = Duration::from_secs(600);
        })
        .start()
        .await;
    gw.provider("stall", &stalling.base_url()).await;

    // Bounded far below the request deadline: the body's silence ends the wait, not the deadline.
    let reply = tokio::time::timeout(Duration::from_secs(60), gw.chat("stall/a", "hi"))
        .await
        .expect("the stalled body was abandoned after --upstream-timeout");
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "upstream_timeout");
    assert_eq!(failures(&gw.metrics().await, "timeout"), stalling.requests());
}

/// Streams a chat request to a gateway with a short idle timeout and the given upstream.
async fn stream_from(
    play: Play,
    configure: impl Fn(&mut drover_dataplane::Config) + Send + 'static,
) -> (Gateway, RawUpstream, Reply) {
    let up = RawUpstream::start(play).await;
    let gw = Gateway::builder().configure(configure).start().await;
    gw.provider("raw", &up.base_url()).await;
    let reply = tokio::time::timeout(Duration::from_secs(60), gw.chat_stream("raw/a", "hi"))
        .await
        .expect("the stream ends");
    (gw, up, reply)
}

/// The `error.code` of the last event of an OpenAI stream.
fn last_error_code(reply: &Reply) -> String {
    let events = reply.events();
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    last["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_stalled_stream_ends_with_stream_timeout() {
    let (gw, up, reply) = stream_from(Play::Stall(format!("{SSE_HEAD}{}", chunk_event("hel"))), |c| {
        c.proxy.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.events().len(),
        2,
        "the event before the stall, then the error: {:?}",
        reply.events()
    );
    assert_eq!(last_error_code(&reply), "stream_timeout");
    assert_eq!(up.requests(), 1);
    assert!(gw.metrics().await.contains("drover_streams_incomplete_total 1"));
}

#[tokio::test]
async fn a_broken_stream_ends_with_stream_incomplete() {
    let (gw, up, reply) = stream_from(
        Play::Cut(format!("{SSE_HEAD}{}{}", chunk_event("hel"), chunk_event("lo"))),
        |_| {},
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.events().len(), 3, "{:?}", reply.events());
    assert_eq!(last_error_code(&reply), "stream_incomplete");
    assert_eq!(up.requests(), 1);
    assert!(gw.metrics().await.contains("drover_streams_incomplete_total 1"));
}

#[tokio::test]
async fn an_event_over_the_limit_ends_the_stream_with_event_too_large() {
    let huge = format!("data: {{\"blob\":\"{}\"}}\n\n", "z".repeat(64 << 10));
    let script = format!(
        "{SSE_HEAD}{}{huge}{}data: [DONE]\n\n",
        chunk_event("before"),
        chunk_event("after")
    );
    let (gw, up, reply) = stream_from(Play::Stall(script), |c| {
        c.proxy.max_event_bytes = std::num::NonZeroUsize::new(4096).unwrap();
    })
    .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].contains("before"), "{events:?}");
    assert_eq!(last_error_code(&reply), "event_too_large");
    assert!(!reply.text().contains("zzzz"), "the event was not relayed");
    assert!(!reply.text().contains("after"), "nothing after it was relayed");
    assert_eq!(up.requests(), 1);
    assert!(gw.metrics().await.contains("drover_streams_incomplete_total 1"));
    // The gateway let go of the upstream connection.
    for _ in 0..500 {
        if up.closed.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream connection was kept open after the stream ended");
}

#[tokio::test]
async fn an_event_over_the_limit_reaches_anthropic_callers_in_their_format() {
    let huge = format!("data: {{\"blob\":\"{}\"}}\n\n", "z".repeat(64 << 10));
    let up = RawUpstream::start(Play::Stall(format!("{SSE_HEAD}{}{huge}", chunk_event("before")))).await;
    let gw = Gateway::builder()
        .configure(|c| c.proxy.max_event_bytes = std::num::NonZeroUsize::new(4096).unwrap())
        .start()
        .await;
    gw.provider("raw", &up.base_url()).await;
    let reply = tokio::time::timeout(Duration::from_secs(60), gw.message("raw/a", "hi", true))
        .await
        .expect("the stream ends");
    assert_eq!(reply.status, 200);
    let events = reply.named_events();
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert!(
        data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit of 4096 bytes"),
        "{data}"
    );
    assert!(!events.iter().any(|(n, _)| n == "message_stop"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_an_endless_line_closes_the_upstream() {
    let up = RawUpstream::start(Play::EndlessLine).await;
    // A limit far beyond what arrives before the caller leaves: the caller leaving must be
    // what stops the gateway reading, not the event limit.
    let gw = Gateway::builder()
        .configure(|c| c.proxy.max_event_bytes = std::num::NonZeroUsize::new(256 << 20).unwrap())
        .start()
        .await;
    gw.provider("raw", &up.base_url()).await;

    let mut caller = TcpStream::connect(gw.dps[0].addr()).await.unwrap();
    let body = chat_body("raw/a", "hi", true);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: drover\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    caller.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut piece = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), caller.read(&mut piece))
            .await
            .expect("the gateway answers the stream's head")
            .unwrap();
        assert!(n > 0, "the gateway closed the caller's connection");
        head.extend_from_slice(&piece[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Leave once the line is well under way.
    while up.written.load(Ordering::SeqCst) < 1 << 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(caller);

    let mut waited = 0;
    while !up.closed.load(Ordering::SeqCst) {
        assert!(
            waited < 1000,
            "the gateway kept reading the endless line after the caller left ({} bytes)",
            up.written.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("drover_streams_incomplete_total 0"),
        "the stream was dropped with its caller, not ended by the event limit:\n{metrics}"
    );
}

#[tokio::test]
async fn failing_requests_open_the_breaker_only_when_distinct_requests_keep_failing() {
    let crashing = MockProvider::openai()
        .default_fault(Fault::Status(500))
        .start()
        .await;
    let gw = Gateway::builder().start().await;
    gw.provider("crash", &crashing.base_url()).await;
    gw.route("m", &["crash/x"]).await;

    // Two requests whose bodies crash the target, each retried on it.
    for _ in 0..2 {
        assert_eq!(gw.chat("m", "a poisonous prompt").await.status, 502);
    }
    let before = crashing.calls();
    assert!(before >= 4, "each was retried: {before}");
    // Their retries counted once each: the target is still there for everyone else.
    let reply = gw.chat("m", "an innocent prompt").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        crashing.calls() > before,
        "the third request reached the upstream"
    );

    // Five distinct failing requests in a row open the breaker.
    for _ in 0..2 {
        assert_eq!(gw.chat("m", "x").await.status, 502);
    }
    let calls = crashing.calls();
    let reply = gw.chat("m", "x").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "upstream_unavailable");
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        crashing.calls(),
        calls,
        "the sixth request did not reach the upstream"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains("drover_breakers_open 1"), "{metrics}");
    assert_eq!(failures(&metrics, "status"), calls);
}
