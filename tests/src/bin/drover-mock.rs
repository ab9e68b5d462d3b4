//! drover-mock: a fast provider with fixed answers, for the load benchmark (`tests/bench/run.sh`). Serves
//! `POST /v1/chat/completions` (OpenAI format), non-stream and stream (with the usage chunk when
//! `stream_options.include_usage` is true), and `POST /v1/messages` (Anthropic format), non-stream and
//! stream: a text answer, a call of the tool the request forces (`tool_choice` `{"type":"tool"}`, as a
//! gateway sends structured output), or a JSON text for Anthropic's own structured output
//! (`output_config`), over HTTP/1.1 with keep-alive, on a multi-threaded runtime.
//!
//! Answers are rendered once at startup by the same code as the test mock (`drover_tests::mock::openai`), so
//! they have the real shapes; per request the server only reads the body and scans it for `"stream": true`.
//! Prints the bound address on stdout, then serves until killed.
#![allow(clippy::print_stdout, reason = "the bound address is this binary's output")]

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use drover_tests::mock::{Reply, ReplyOptions, anthropic, openai};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// A fast fixed-answer OpenAI-format provider for benchmarks.
#[derive(Parser, Debug)]
#[command(name = "drover-mock", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Content chunks in a streamed answer.
    #[arg(long, default_value_t = 20)]
    stream_chunks: usize,
}

/// What an Anthropic Messages request asks the answer to be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Output {
    Text,
    /// The forced tool's call.
    Tool,
    /// Structured output (`output_config`): a JSON text.
    Json,
}

/// The answers, rendered once.
struct Answers {
    completion: Bytes,
    events: Arc<[Bytes]>,
    events_with_usage: Arc<[Bytes]>,
    /// Anthropic Messages: text, a forced tool's call, and structured output's JSON text; whole and
    /// streamed.
    message: Bytes,
    message_events: Arc<[Bytes]>,
    tool_message: Bytes,
    tool_events: Arc<[Bytes]>,
    json_message: Bytes,
    json_events: Arc<[Bytes]>,
    not_found: Bytes,
}

const REPLY: &str = "This is a fixed answer from the benchmark mock provider. It is long enough to look like a \
                     short real reply, with a few dozen words, so that both the non-streaming body and the \
                     streamed chunks have a realistic size for a chat completion.";

impl Answers {
    fn render(stream_chunks: usize) -> anyhow::Result<Self> {
        let options = ReplyOptions {
            stream_chunks: stream_chunks.max(1),
            reply: Some(REPLY.into()),
            models: vec![],
        };
        let request = |stream: bool, usage: bool| {
            let mut req = json!({
                "model": "bench-model",
                "messages": [
                    { "role": "system", "content": "You are a helpful assistant." },
                    { "role": "user", "content": "Tell me something." }
                ]
            });
            if stream {
                req["stream"] = json!(true);
                req["stream_options"] = json!({ "include_usage": usage });
            }
            openai::route(
                &Method::POST,
                "/v1/chat/completions",
                req.to_string().as_bytes(),
                &options,
                1,
            )
        };
        let Reply::Json { body: completion, .. } = request(false, false) else {
            bail!("a non-stream chat completion rendered as events");
        };
        let (
            Reply::Events { frames: events, .. },
            Reply::Events {
                frames: with_usage, ..
            },
        ) = (request(true, false), request(true, true))
        else {
            bail!("a stream chat completion rendered as JSON");
        };
        let messages = |stream: bool, output: Output| -> anyhow::Result<Reply> {
            let mut req = json!({
                "model": "bench-model",
                "max_tokens": 256,
                "system": "You are a helpful assistant.",
                "messages": [{ "role": "user", "content": "Tell me something." }]
            });
            match output {
                Output::Text => {}
                Output::Tool => {
                    req["tools"] = json!([{ "name": "json_output", "input_schema": { "type": "object" } }]);
                    req["tool_choice"] = json!({ "type": "tool", "name": "json_output" });
                }
                Output::Json => {
                    req["output_config"] =
                        json!({ "format": { "type": "json_schema", "schema": { "type": "object" } } });
                }
            }
            if stream {
                req["stream"] = json!(true);
            }
            let mut headers = http::HeaderMap::new();
            headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
            Ok(anthropic::route(
                &Method::POST,
                "/v1/messages",
                &headers,
                req.to_string().as_bytes(),
                &options,
                1,
            ))
        };
        let whole = |reply: Reply| match reply {
            Reply::Json { body, .. } => Ok(body),
            Reply::Events { .. } => bail!("a non-stream message rendered as events"),
        };
        let frames_of = |reply: Reply| -> anyhow::Result<Arc<[Bytes]>> {
            match reply {
                Reply::Events { frames, .. } => Ok(frames.into()),
                Reply::Json { .. } => bail!("a stream message rendered as JSON"),
            }
        };
        let message = whole(messages(false, Output::Text)?)?;
        let message_events = frames_of(messages(true, Output::Text)?)?;
        let tool_message = whole(messages(false, Output::Tool)?)?;
        let tool_events = frames_of(messages(true, Output::Tool)?)?;
        let json_message = whole(messages(false, Output::Json)?)?;
        let json_events = frames_of(messages(true, Output::Json)?)?;
        let not_found = json!({ "error": {
            "message": "Invalid URL (drover-mock serves POST /v1/chat/completions and /v1/messages only)",
            "type": "invalid_request_error", "param": null, "code": null
        } });
        Ok(Answers {
            completion,
            events: events.into(),
            events_with_usage: with_usage.into(),
            message,
            message_events,
            tool_message,
            tool_events,
            json_message,
            json_events,
            not_found: Bytes::from(not_found.to_string()),
        })
    }
}

type Frames = StreamBody<futures_util::stream::Iter<FrameIter>>;
type Body = Either<Full<Bytes>, Frames>;

/// Yields the precomputed events of one streamed answer, one body frame each.
struct FrameIter {
    frames: Arc<[Bytes]>,
    next: usize,
}

impl Iterator for FrameIter {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        let frame = self.frames.get(self.next)?.clone();
        self.next += 1;
        Some(Ok(Frame::data(frame)))
    }
}

/// Where `"key"` is followed (after optional whitespace and a colon) by `true`. A byte scan, not a parse: the
/// benchmark's bodies are well-formed, and this keeps the mock's cost per request negligible.
fn flag(body: &[u8], key: &[u8]) -> bool {
    let mut rest = body;
    while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
        rest = &rest[at + key.len()..];
        let value = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'));
        if let Some(start) = value
            && rest[start..].starts_with(b"true")
        {
            return true;
        }
    }
    false
}

fn with_type(mut response: Response<Body>, content_type: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn stream_of(frames: &Arc<[Bytes]>) -> Response<Body> {
    let frames = FrameIter {
        frames: Arc::clone(frames),
        next: 0,
    };
    with_type(
        Response::new(Either::Right(StreamBody::new(futures_util::stream::iter(frames)))),
        "text/event-stream",
    )
}

/// An Anthropic Messages answer: the forced tool's call when the request forces one, a JSON text
/// when it asks for structured output.
fn message(answers: &Answers, body: &[u8]) -> Response<Body> {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let output = if has(b"\"type\":\"tool\"") {
        Output::Tool
    } else if has(b"\"output_config\"") {
        Output::Json
    } else {
        Output::Text
    };
    let (whole, events) = match output {
        Output::Text => (&answers.message, &answers.message_events),
        Output::Tool => (&answers.tool_message, &answers.tool_events),
        Output::Json => (&answers.json_message, &answers.json_events),
    };
    if flag(body, b"\"stream\"") {
        stream_of(events)
    } else {
        with_type(
            Response::new(Either::Left(Full::new(whole.clone()))),
            "application/json",
        )
    }
}

async fn answer(answers: Arc<Answers>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let post = req.method() == Method::POST;
    let is_chat = post && req.uri().path() == "/v1/chat/completions";
    let is_message = post && req.uri().path() == "/v1/messages";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if is_message {
        return Ok(message(&answers, &body));
    }
    if !is_chat {
        let mut response = Response::new(Either::Left(Full::new(answers.not_found.clone())));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(with_type(response, "application/json"));
    }
    if !flag(&body, b"\"stream\"") {
        let response = Response::new(Either::Left(Full::new(answers.completion.clone())));
        return Ok(with_type(response, "application/json"));
    }
    let frames = if flag(&body, b"\"include_usage\"") {
        &answers.events_with_usage
    } else {
        &answers.events
    };
    Ok(stream_of(frames))
}

async fn serve(listener: TcpListener, answers: Arc<Answers>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let answers = Arc::clone(&answers);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&answers), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let answers = Arc::new(Answers::render(args.stream_chunks)?);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build().context("start the runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("bind {}", args.addr))?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{addr}")?;
        stdout.flush()?;
        serve(listener, answers).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_flag_is_found_with_any_spacing() {
        assert!(flag(br#"{"model":"m","stream":true}"#, b"\"stream\""));
        assert!(flag(br#"{"stream" : true}"#, b"\"stream\""));
        assert!(!flag(br#"{"stream":false}"#, b"\"stream\""));
        assert!(!flag(
            br#"{"stream_options":{"include_usage":true}}"#,
            b"\"stream\""
        ));
        assert!(flag(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            b"\"include_usage\""
        ));
        assert!(!flag(b"", b"\"stream\""));
    }

    #[test]
    fn answers_render_with_real_shapes() {
        let answers = Answers::render(4).unwrap();
        let completion: serde_json::Value = serde_json::from_slice(&answers.completion).unwrap();
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(
            answers.events.len(),
            1 + 4 + 1 + 1,
            "role, content, finish, [DONE]"
        );
        assert_eq!(answers.events_with_usage.len(), answers.events.len() + 1);
        assert_eq!(answers.events.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        let message: serde_json::Value = serde_json::from_slice(&answers.message).unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(message["content"][0]["type"], "text");
        let tool: serde_json::Value = serde_json::from_slice(&answers.tool_message).unwrap();
        assert_eq!(tool["content"][0]["name"], "json_output");
        assert!(
            answers
                .message_events
                .last()
                .unwrap()
                .starts_with(b"event: message_stop")
        );
        assert!(
            answers
                .tool_events
                .iter()
                .any(|e| e.windows(16).any(|w| w == b"input_json_delta"))
        );
    }

    #[test]
    fn a_forced_tool_gets_its_call() {
        let answers = Answers::render(4).unwrap();
        let whole = |body: &[u8]| match message(&answers, body).into_body() {
            Either::Left(full) => full,
            Either::Right(_) => panic!("streamed"),
        };
        let forced = br#"{"model":"m","tool_choice":{"type":"tool","name":"json_output"}}"#;
        assert_eq!(
            format!("{:?}", whole(forced)),
            format!("{:?}", Full::new(answers.tool_message.clone()))
        );
        let native = br#"{"model":"m","output_config":{"format":{"type":"json_schema","schema":{}}}}"#;
        assert_eq!(
            format!("{:?}", whole(native)),
            format!("{:?}", Full::new(answers.json_message.clone()))
        );
        let json: serde_json::Value = serde_json::from_slice(&answers.json_message).unwrap();
        let text = json["content"][0]["text"].as_str().unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap()
                .is_object(),
            "{text}"
        );
        let plain = br#"{"model":"m"}"#;
        assert_eq!(
            format!("{:?}", whole(plain)),
            format!("{:?}", Full::new(answers.message.clone()))
        );
        let stream = br#"{"model":"m","stream":true}"#;
        assert!(matches!(message(&answers, stream).into_body(), Either::Right(_)));
    }
}
