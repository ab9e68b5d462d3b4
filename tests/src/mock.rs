//! A scripted fake LLM provider on loopback, for end-to-end tests.
//!
//! It speaks the OpenAI wire format ([`MockProvider::openai`]), Anthropic's ([`MockProvider::anthropic`]),
//! Gemini's ([`MockProvider::gemini`]) or Azure OpenAI's ([`MockProvider::azure`]), answers deterministically
//! (the reply echoes the last message, usage is computed from the text), records every request, and plays a
//! script of [`Fault`]s: each request takes the next one, then the default ([`Fault::Ok`] unless set). It is
//! built on hyper directly so that it can drop a connection without answering. [`Fault::Replay`] answers with a
//! recorded provider answer byte for byte instead (the conformance corpus, `tests/corpus/`, is built on it).
//!
//! ```no_run
//! # async fn demo() {
//! use drover_tests::mock::{Fault, MockProvider};
//! let up = MockProvider::openai().fail_first(2, 500).start().await;
//! // ... point the gateway at up.base_url(), send one request ...
//! assert_eq!(up.calls_to("/v1/chat/completions"), 3);
//! up.script(vec![Fault::Status(429).with_retry_after(2), Fault::Ok]);
//! # }
//! ```
//!
//! Not owned here: the gateway harness, and any assertion about the gateway itself.

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod openai;
mod reply;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Error type of the mock's response bodies and of a dropped connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of the mock's responses.
pub type MockBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long a cut stream waits before failing, so the frames before the cut reach the client first.
const CUT_GRACE: Duration = Duration::from_millis(20);

/// What the mock does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    Ok,
    /// Answer with this status and a provider-shaped error body (typed by status: 429 is a rate limit, 5xx a
    /// server error, ...).
    Status(u16),
    /// Answer with an error, with more control than [`Fault::Status`]: a `retry-after` header, a message.
    Error(ErrorReply),
    /// Wait this long before the response headers, then answer normally.
    Delay(Duration),
    /// Close the connection without any response.
    Reset,
    /// Streaming request: send the events before the content and `after_chunks` content chunks, then abort the
    /// body, so the client sees the connection die mid-stream (the terminal event never comes, even when
    /// `after_chunks` is at least the number of chunks). Non-stream request: send the headers (with the full
    /// `content-length`) and half the body, then abort.
    CutStream {
        /// Content chunks sent before the cut.
        after_chunks: usize,
    },
    /// Answer with exactly this recorded answer, whatever was asked (no key check, no endpoint): the status,
    /// `content-type` and body bytes as given. A `text/event-stream` body goes out in several chunks cut at
    /// arbitrary byte positions (inside events, lines and UTF-8 characters alike), so the client's framing is
    /// exercised; it ends cleanly after the last byte, whether or not the recording has its terminal event.
    /// Anything else goes out whole, with its `content-length`. Made by [`Fault::replay`].
    Replay {
        /// HTTP status (100..=999; anything else is sent as 500).
        status: u16,
        /// The `content-type` header.
        content_type: String,
        /// The body, byte for byte.
        body: Bytes,
    },
}

impl Fault {
    /// A [`Fault::Replay`] of this recorded answer.
    pub fn replay(status: u16, content_type: impl Into<String>, body: impl Into<Bytes>) -> Fault {
        Fault::Replay {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// This error answer with a `retry-after: SECS` header. Only for [`Fault::Status`] and [`Fault::Error`];
    /// other faults are returned unchanged.
    #[must_use]
    pub fn with_retry_after(self, secs: u64) -> Fault {
        match self.into_error() {
            Ok(e) => Fault::Error(ErrorReply {
                retry_after: Some(secs),
                ..e
            }),
            Err(other) => other,
        }
    }

    /// This error answer with `message` in its body. Only for [`Fault::Status`] and [`Fault::Error`]; other
    /// faults are returned unchanged.
    #[must_use]
    pub fn with_message(self, message: impl Into<String>) -> Fault {
        match self.into_error() {
            Ok(e) => Fault::Error(ErrorReply {
                message: Some(message.into()),
                ..e
            }),
            Err(other) => other,
        }
    }

    fn into_error(self) -> Result<ErrorReply, Fault> {
        match self {
            Fault::Status(status) => Ok(ErrorReply::new(status)),
            Fault::Error(e) => Ok(e),
            other => Err(other),
        }
    }
}

/// A scripted error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// HTTP status (100..=999; anything else is sent as 500).
    pub status: u16,
    /// Seconds for a `retry-after` header, if any.
    pub retry_after: Option<u64>,
    /// Message in the error body; a typical one for the status if `None`.
    pub message: Option<String>,
}

impl ErrorReply {
    /// An error with this status, no `retry-after`, the default message.
    pub fn new(status: u16) -> Self {
        ErrorReply {
            status,
            retry_after: None,
            message: None,
        }
    }
}

/// A request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// All request headers, as received.
    pub headers: HeaderMap,
    /// The whole body (empty if the client failed to send it).
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The wire format a mock speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// OpenAI: chat completions, completions, embeddings, models.
    OpenAi,
    /// Anthropic: messages, count_tokens, models.
    Anthropic,
    /// Gemini (`v1beta`): generateContent, streamGenerateContent, countTokens, models.
    Gemini,
    /// Azure OpenAI: the OpenAI endpoints under `/openai/deployments/{deployment}/`, with `api-version`.
    Azure,
}

impl Flavor {
    /// Renders the normal answer to one request (`query` is the URL's query string, if any).
    #[allow(clippy::too_many_arguments, reason = "one request, taken apart")]
    pub fn render(
        self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        options: &ReplyOptions,
        seq: u64,
    ) -> Reply {
        match self {
            Flavor::OpenAi => openai::route(method, path, body, options, seq),
            Flavor::Anthropic => anthropic::route(method, path, headers, body, options, seq),
            Flavor::Gemini => gemini::route(method, path, query, body, options, seq),
            Flavor::Azure => azure::route(method, path, query, body, options, seq),
        }
    }

    fn scripted_error(self, fault: &ErrorReply) -> Reply {
        match self {
            Flavor::OpenAi => openai::scripted_error(fault),
            Flavor::Anthropic => anthropic::scripted_error(fault),
            Flavor::Gemini => gemini::scripted_error(fault),
            Flavor::Azure => azure::scripted_error(fault),
        }
    }

    /// `None` if the request carries `key` the way this provider expects it, else the 401 to answer.
    fn check_key(self, headers: &HeaderMap, query: Option<&str>, key: &str) -> Option<Reply> {
        let presented = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
        match self {
            Flavor::OpenAi => {
                let bearer = presented("authorization").and_then(|v| v.strip_prefix("Bearer "));
                (bearer != Some(key)).then(openai::unauthorized)
            }
            Flavor::Anthropic => (presented("x-api-key") != Some(key)).then(anthropic::unauthorized),
            Flavor::Gemini => {
                let in_query =
                    query.is_some_and(|q| q.split('&').any(|kv| kv.strip_prefix("key=") == Some(key)));
                (presented("x-goog-api-key") != Some(key) && !in_query).then(gemini::unauthorized)
            }
            Flavor::Azure => (presented("api-key") != Some(key)).then(azure::unauthorized),
        }
    }
}

/// What shapes the normal answers.
#[derive(Clone, Debug)]
pub struct ReplyOptions {
    /// Content chunks in a streamed answer (fewer only if the reply has fewer characters).
    pub stream_chunks: usize,
    /// Fixed reply text instead of `"mock reply to: <last message>"`.
    pub reply: Option<String>,
    /// Model ids listed by `GET /v1/models`.
    pub models: Vec<String>,
}

impl Default for ReplyOptions {
    fn default() -> Self {
        ReplyOptions {
            stream_chunks: 5,
            reply: None,
            models: vec![
                "gpt-4o-mini".into(),
                "gpt-4o".into(),
                "text-embedding-3-small".into(),
            ],
        }
    }
}

/// A rendered answer, before faults and transport.
#[derive(Clone, Debug)]
pub enum Reply {
    /// One JSON document.
    Json {
        /// HTTP status.
        status: u16,
        /// Seconds for a `retry-after` header, if any.
        retry_after: Option<u64>,
        /// The serialized document.
        body: Bytes,
    },
    /// A `text/event-stream`: `frames` are whole events; the first `prelude` come before the content, the
    /// next `content` are the content chunks, the rest close the stream.
    Events {
        /// Every event, in order.
        frames: Vec<Bytes>,
        /// Events before the first content chunk.
        prelude: usize,
        /// Content chunks.
        content: usize,
    },
}

impl Reply {
    /// A JSON answer with this status.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::Json {
            status,
            retry_after: None,
            body: Bytes::from(body.to_string()),
        }
    }

    fn set_retry_after(&mut self, secs: Option<u64>) {
        if let Reply::Json { retry_after, .. } = self {
            *retry_after = secs;
        }
    }
}

/// Configures a mock before it starts. Made by [`MockProvider::openai`], [`MockProvider::anthropic`],
/// [`MockProvider::gemini`] or [`MockProvider::azure`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `start`"]
pub struct MockBuilder {
    flavor: Flavor,
    script: Vec<Fault>,
    default: Fault,
    options: ReplyOptions,
    latency: Duration,
    chunk_delay: Duration,
    api_key: Option<String>,
}

impl MockBuilder {
    fn new(flavor: Flavor, models: Vec<String>) -> Self {
        MockBuilder {
            flavor,
            script: Vec::new(),
            default: Fault::Ok,
            options: ReplyOptions {
                models,
                ..ReplyOptions::default()
            },
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            api_key: None,
        }
    }

    /// The next `n` requests are answered with `status` (appended to the script).
    pub fn fail_first(mut self, n: usize, status: u16) -> Self {
        self.script.extend(std::iter::repeat_n(Fault::Status(status), n));
        self
    }

    /// Appends one fault to the script.
    pub fn then(mut self, fault: Fault) -> Self {
        self.script.push(fault);
        self
    }

    /// Appends faults to the script, in order.
    pub fn script(mut self, faults: impl IntoIterator<Item = Fault>) -> Self {
        self.script.extend(faults);
        self
    }

    /// What the mock does once the script is used up (default [`Fault::Ok`]).
    pub fn default_fault(mut self, fault: Fault) -> Self {
        self.default = fault;
        self
    }

    /// Content chunks in a streamed answer (default 5, at least 1).
    pub fn stream_chunks(mut self, n: usize) -> Self {
        self.options.stream_chunks = n.max(1);
        self
    }

    /// Pause between two events of a streamed answer (default none).
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Fixed delay before every response, errors included (default none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Answer with this text instead of `"mock reply to: <last message>"`.
    pub fn reply(mut self, text: impl Into<String>) -> Self {
        self.options.reply = Some(text.into());
        self
    }

    /// Model ids listed by `GET /v1/models`.
    pub fn models<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.options.models = ids.into_iter().map(Into::into).collect();
        self
    }

    /// Answer 401 unless the request carries this key (`Authorization: Bearer KEY` for OpenAI, `x-api-key` for
    /// Anthropic, `x-goog-api-key` or the `key` query parameter for Gemini, `api-key` for Azure). Checked after
    /// the scripted fault, before the endpoint.
    pub fn require_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Binds `127.0.0.1:0` and serves until the returned mock is shut down or dropped.
    ///
    /// # Panics
    /// If no loopback port can be bound: the test cannot run without one.
    #[allow(
        clippy::expect_used,
        reason = "test harness: a mock that cannot bind must fail the test at once"
    )]
    pub async fn start(self) -> MockProvider {
        self.try_start().await.expect("mock provider: bind 127.0.0.1:0")
    }

    /// Like [`MockBuilder::start`], returning the bind error instead of panicking.
    pub async fn try_start(self) -> std::io::Result<MockProvider> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            flavor: self.flavor,
            options: self.options,
            latency: self.latency,
            chunk_delay: self.chunk_delay,
            api_key: self.api_key,
            script: Mutex::new(Script {
                queue: self.script.into(),
                default: self.default,
            }),
            requests: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(serve(listener, Arc::clone(&shared), stopped));
        Ok(MockProvider {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }
}

/// A running mock provider. Dropping it stops it (open connections included).
#[derive(Debug)]
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl MockProvider {
    /// A mock that speaks the OpenAI wire format.
    pub fn openai() -> MockBuilder {
        MockBuilder::new(Flavor::OpenAi, ReplyOptions::default().models)
    }

    /// A mock that speaks the Anthropic Messages wire format.
    pub fn anthropic() -> MockBuilder {
        MockBuilder::new(
            Flavor::Anthropic,
            vec!["claude-sonnet-4-5".into(), "claude-haiku-4-5".into()],
        )
    }

    /// A mock that speaks Gemini's `v1beta` wire format; [`MockProvider::base_url`] is
    /// `http://127.0.0.1:PORT/v1beta`.
    pub fn gemini() -> MockBuilder {
        MockBuilder::new(
            Flavor::Gemini,
            vec!["gemini-2.5-flash".into(), "gemini-2.5-pro".into()],
        )
    }

    /// A mock that speaks Azure OpenAI: deployment URLs, `api-version`, `api-key`;
    /// [`MockProvider::base_url`] is the origin `http://127.0.0.1:PORT`.
    pub fn azure() -> MockBuilder {
        MockBuilder::new(Flavor::Azure, ReplyOptions::default().models)
    }

    /// The bound address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL a provider is configured with (request paths are appended): `http://127.0.0.1:PORT/v1`
    /// for OpenAI and Anthropic, `…/v1beta` for Gemini, the origin for Azure (deployment paths start at
    /// `/openai/`).
    pub fn base_url(&self) -> String {
        match self.shared.flavor {
            Flavor::OpenAi | Flavor::Anthropic => format!("http://{}/v1", self.addr),
            Flavor::Gemini => format!("http://{}/v1beta", self.addr),
            Flavor::Azure => self.origin(),
        }
    }

    /// Requests received, all paths, whatever was answered (resets and errors included).
    pub fn calls(&self) -> u64 {
        self.shared.requests().len() as u64
    }

    /// Requests received on exactly this path (no query), e.g. `"/v1/chat/completions"`.
    pub fn calls_to(&self, path: &str) -> u64 {
        self.shared.requests().iter().filter(|r| r.path == path).count() as u64
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests().clone()
    }

    /// The last request received.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.requests().last().cloned()
    }

    /// The body of the last request received, parsed as JSON.
    pub fn last_json(&self) -> Option<Value> {
        self.shared.requests().last().and_then(RecordedRequest::json)
    }

    /// Forgets the requests received so far (the script is kept).
    pub fn clear_requests(&self) {
        self.shared.requests().clear();
    }

    /// Replaces the script: the next requests take these faults, in order.
    pub fn script(&self, faults: Vec<Fault>) {
        self.shared.script().queue = faults.into();
    }

    /// Appends one fault to the script.
    pub fn push(&self, fault: Fault) {
        self.shared.script().queue.push_back(fault);
    }

    /// What the mock does once the script is used up.
    pub fn set_default(&self, fault: Fault) {
        self.shared.script().default = fault;
    }

    /// Faults still waiting in the script.
    pub fn pending(&self) -> usize {
        self.shared.script().queue.len()
    }

    /// Streamed answers the client stopped reading before their end (noticed when the mock next writes, so
    /// give streams a [`MockBuilder::chunk_delay`] to observe it). A [`Fault::CutStream`] does not count.
    pub fn abandoned_streams(&self) -> u64 {
        self.shared.abandoned.load(Ordering::Relaxed)
    }

    /// Requests being answered now (from arrival to the end of the response body).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once since the start (or the last reset).
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_max_in_flight(&self) {
        self.shared
            .max_in_flight
            .store(self.shared.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Stops accepting, closes every connection, and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[derive(Debug)]
struct Script {
    queue: VecDeque<Fault>,
    default: Fault,
}

#[derive(Debug)]
struct Shared {
    flavor: Flavor,
    options: ReplyOptions,
    latency: Duration,
    chunk_delay: Duration,
    api_key: Option<String>,
    script: Mutex<Script>,
    requests: Mutex<Vec<RecordedRequest>>,
    seq: AtomicU64,
    abandoned: AtomicU64,
    /// Requests being answered now (until the last byte of the body is sent or the client
    /// goes away), and the most there were at once.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_fault(&self) -> Fault {
        let mut script = self.script();
        match script.queue.pop_front() {
            Some(fault) => fault,
            None => script.default.clone(),
        }
    }
}

/// The accept loop. Connections live in a `JoinSet` owned by this task, so ending (or aborting) it closes them.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move {
                            let guard = InFlight::enter(&shared);
                            let resp = handle(shared, req).await?;
                            Ok::<_, ResetConnection>(resp.map(|inner| UnsyncBoxBody::new(Guarded { inner, guard: Some(guard) })))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Returned by the service for [`Fault::Reset`]: hyper then closes the connection without a response.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock provider: scripted connection reset")
    }
}

impl std::error::Error for ResetConnection {}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<MockBody>, ResetConnection> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
    shared.requests().push(RecordedRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let fault = shared.next_fault();
    if !shared.latency.is_zero() {
        tokio::time::sleep(shared.latency).await;
    }
    let cut = match fault {
        Fault::Ok => None,
        Fault::Reset => return Err(ResetConnection),
        Fault::Status(status) => {
            return Ok(respond(
                &shared,
                shared.flavor.scripted_error(&ErrorReply::new(status)),
                None,
            ));
        }
        Fault::Error(e) => return Ok(respond(&shared, shared.flavor.scripted_error(&e), None)),
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Fault::CutStream { after_chunks } => Some(after_chunks),
        Fault::Replay {
            status,
            content_type,
            body,
        } => return Ok(replay(status, &content_type, body)),
    };
    if let Some(key) = &shared.api_key
        && let Some(denied) = shared.flavor.check_key(&parts.headers, parts.uri.query(), key)
    {
        return Ok(respond(&shared, denied, None));
    }
    let reply = shared.flavor.render(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        &body,
        &shared.options,
        seq,
    );
    Ok(respond(&shared, reply, cut))
}

/// Turns a rendered answer into a response, cut after `cut` content chunks if set.
fn respond(shared: &Arc<Shared>, reply: Reply, cut: Option<usize>) -> Response<MockBody> {
    match reply {
        Reply::Json {
            status,
            retry_after,
            body,
        } => {
            let full_len = body.len();
            let mut response = match cut {
                None => Response::new(
                    Full::new(body)
                        .map_err(|never: Infallible| match never {})
                        .boxed_unsync(),
                ),
                Some(_) => {
                    let half = body.slice(..full_len / 2);
                    Response::new(frames_body(vec![half], Duration::ZERO, true, None))
                }
            };
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(full_len));
            if let Some(secs) = retry_after {
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
        Reply::Events {
            mut frames,
            prelude,
            content,
        } => {
            let is_cut = cut.is_some();
            if let Some(after) = cut {
                frames.truncate(prelude + after.min(content));
            }
            let body = frames_body(frames, shared.chunk_delay, is_cut, Some(Arc::clone(shared)));
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert("cache-control", HeaderValue::from_static("no-cache"));
            response
        }
    }
}

/// A recorded answer as is: see [`Fault::Replay`].
fn replay(status: u16, content_type: &str, body: Bytes) -> Response<MockBody> {
    let is_stream = content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"));
    let full_len = body.len();
    let mut response = if is_stream {
        let chunks = split_arbitrarily(&body);
        let stream =
            futures_util::stream::unfold((chunks.into_iter(), false), |(mut chunks, started)| async move {
                let chunk = chunks.next()?;
                if started {
                    // Lets the connection write what it has, so the pieces leave as separate writes.
                    tokio::task::yield_now().await;
                }
                Some((Ok::<_, BoxError>(Frame::data(chunk)), (chunks, true)))
            });
        Response::new(StreamBody::new(stream).boxed_unsync())
    } else {
        Response::new(
            Full::new(body)
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        )
    };
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if is_stream {
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(full_len));
    }
    response
}

/// `body` cut into a few pieces at byte positions that depend only on its length (deterministic, but with no
/// regard for event, line or character boundaries). Empty pieces are never produced.
fn split_arbitrarily(body: &Bytes) -> Vec<Bytes> {
    let len = body.len();
    if len < 2 {
        return vec![body.clone()];
    }
    // xorshift64, seeded by the length: a fixed recording always splits the same way.
    let mut state = (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces = (len / 64).clamp(2, 8);
    let mut cuts: Vec<usize> = (1..pieces).map(|_| 1 + (next() as usize) % (len - 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        out.push(body.slice(from..cut));
        from = cut;
    }
    out.push(body.slice(from..));
    out
}

/// One request being answered: counted from its arrival until its response body is done.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until its last frame is handed
/// to the connection (before the client can have read it), or until it is dropped unfinished.
struct Guarded {
    inner: MockBody,
    guard: Option<InFlight>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None | Some(Err(_))) => true,
            std::task::Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            std::task::Poll::Pending => false,
        };
        if ended {
            self.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a streamed answer as abandoned if it is dropped before its end.
struct Watch {
    shared: Option<Arc<Shared>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Feed {
    frames: std::vec::IntoIter<Bytes>,
    delay: Duration,
    started: bool,
    cut: bool,
    watch: Watch,
}

/// A body sending `frames` (with `delay` between two), then failing if `cut`.
fn frames_body(frames: Vec<Bytes>, delay: Duration, cut: bool, shared: Option<Arc<Shared>>) -> MockBody {
    let feed = Feed {
        frames: frames.into_iter(),
        delay,
        started: false,
        cut,
        watch: Watch { shared },
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        if let Some(frame) = feed.frames.next() {
            if feed.started && !feed.delay.is_zero() {
                tokio::time::sleep(feed.delay).await;
            }
            feed.started = true;
            return Some((Ok(Frame::data(frame)), feed));
        }
        feed.watch.shared = None;
        if feed.cut {
            feed.cut = false;
            tokio::time::sleep(CUT_GRACE).await;
            let cut: BoxError = "mock provider: scripted cut of the response body".into();
            return Some((Err(cut), feed));
        }
        None
    });
    StreamBody::new(stream).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use serde_json::json;

    fn chat_body(stream: bool, include_usage: Option<bool>) -> Value {
        let mut body = json!({
            "model": "gpt-test",
            "messages": [
                { "role": "system", "content": "be brief" },
                { "role": "user", "content": "hello world" }
            ]
        });
        if stream {
            body["stream"] = json!(true);
        }
        if let Some(include) = include_usage {
            body["stream_options"] = json!({ "include_usage": include });
        }
        body
    }

    async fn post(up: &MockProvider, path: &str, body: &Value) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new()
            .post(format!("{}{path}", up.origin()))
            .json(body)
            .send()
            .await
    }

    /// Reads an SSE body to its end (events may end with `\n\n` or `\r\n\r\n`): the `data:` payloads, and
    /// whether the body failed.
    async fn read_events(response: reqwest::Response) -> (Vec<String>, bool) {
        let mut text = String::new();
        let mut failed = false;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let data = text
            .replace("\r\n", "\n")
            .split("\n\n")
            .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_owned)
            .collect();
        (data, failed)
    }

    fn contents(events: &[String]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|v| v.pointer("/choices/0/delta/content")?.as_str().map(str::to_owned))
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[tokio::test]
    async fn non_stream_chat_has_the_openai_shape_and_deterministic_usage() {
        let up = MockProvider::openai().start().await;
        let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-test");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(body["created"].is_u64());
        assert_eq!(body["choices"][0]["index"], 0);
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "mock reply to: hello world"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        // ("be brief" + "hello world") = 19 chars -> 5 tokens; the reply has 5 words.
        assert_eq!(body["usage"]["prompt_tokens"], 5);
        assert_eq!(body["usage"]["completion_tokens"], 5);
        assert_eq!(body["usage"]["total_tokens"], 10);
    }

    #[tokio::test]
    async fn max_tokens_cuts_the_reply() {
        let up = MockProvider::openai().start().await;
        let mut body = chat_body(false, None);
        body["max_tokens"] = json!(2);
        let body: Value = post(&up, "/v1/chat/completions", &body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "mock reply");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }

    #[tokio::test]
    async fn stream_ends_with_done_and_has_no_usage_unless_asked() {
        let up = MockProvider::openai().stream_chunks(3).start().await;
        let response = post(&up, "/v1/chat/completions", &chat_body(true, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (events, failed) = read_events(response).await;
        assert!(!failed);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks.len(), 1 + 3 + 1, "role, 3 content chunks, finish");
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk" && c.get("usage").is_none())
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(contents(&events).concat(), "mock reply to: hello world");
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    }

    #[tokio::test]
    async fn stream_includes_a_usage_chunk_when_asked() {
        let up = MockProvider::openai().start().await;
        let response = post(&up, "/v1/chat/completions", &chat_body(true, Some(true)))
            .await
            .unwrap();
        let (events, _) = read_events(response).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let (usage_chunk, others) = chunks.split_last().unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 5);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 10);
        assert!(
            others
                .iter()
                .all(|c| c["usage"].is_null() && c.get("usage").is_some())
        );
        assert_eq!(contents(&events).len(), 5, "default stream_chunks");

        let response = post(&up, "/v1/chat/completions", &chat_body(true, Some(false)))
            .await
            .unwrap();
        let (events, _) = read_events(response).await;
        assert!(events.iter().all(|e| !e.contains("\"usage\"")));
    }

    #[tokio::test]
    async fn stream_options_without_stream_is_rejected() {
        let up = MockProvider::openai().start().await;
        let mut body = chat_body(false, Some(true));
        body["stream"] = json!(false);
        let response = post(&up, "/v1/chat/completions", &body).await.unwrap();
        assert_eq!(response.status(), 400);
    }

    #[tokio::test]
    async fn fail_first_fails_exactly_that_many_requests() {
        let up = MockProvider::openai().fail_first(2, 500).start().await;
        for expected in [500, 500, 200, 200] {
            let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
                .await
                .unwrap();
            assert_eq!(response.status(), expected);
            if expected == 500 {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["type"], "server_error");
                assert!(body["error"]["message"].is_string());
                assert!(body["error"].get("code").is_some());
            }
        }
        assert_eq!(up.calls(), 4);
        assert_eq!(up.pending(), 0);
    }

    #[tokio::test]
    async fn runtime_script_and_default() {
        let up = MockProvider::openai().start().await;
        up.script(vec![Fault::Status(429).with_retry_after(2), Fault::Ok]);
        up.set_default(Fault::Status(503));

        let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");

        let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        for _ in 0..2 {
            let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
                .await
                .unwrap();
            assert_eq!(response.status(), 503);
            assert!(response.headers().get("retry-after").is_none());
        }
    }

    #[tokio::test]
    async fn error_message_can_be_set() {
        let up = MockProvider::openai()
            .then(Fault::Status(400).with_message("bad thing"))
            .start()
            .await;
        let body: Value = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["error"]["message"], "bad thing");
        assert_eq!(Fault::Ok.with_retry_after(3), Fault::Ok);
    }

    #[tokio::test]
    async fn reset_closes_the_connection_without_a_response() {
        let up = MockProvider::openai().then(Fault::Reset).start().await;
        let result = post(&up, "/v1/chat/completions", &chat_body(false, None)).await;
        let error = result.expect_err("a reset must not produce a response");
        assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
        assert_eq!(up.calls(), 1);
        let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "the next request is answered");
    }

    #[tokio::test]
    async fn cut_stream_fails_the_body_after_n_chunks() {
        let up = MockProvider::openai()
            .then(Fault::CutStream { after_chunks: 2 })
            .start()
            .await;
        let response = post(&up, "/v1/chat/completions", &chat_body(true, Some(true)))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let (events, failed) = read_events(response).await;
        assert!(failed, "the body must end in an error");
        assert_eq!(contents(&events), ["mock", " reply"]);
        assert!(
            !events
                .iter()
                .any(|e| e == "[DONE]" || e.contains("finish_reason\":\"stop"))
        );
        assert_eq!(
            up.abandoned_streams(),
            0,
            "a scripted cut is not an abandoned stream"
        );
    }

    #[tokio::test]
    async fn cut_stream_past_the_content_still_never_finishes() {
        let up = MockProvider::openai()
            .then(Fault::CutStream { after_chunks: 99 })
            .start()
            .await;
        let response = post(&up, "/v1/chat/completions", &chat_body(true, None))
            .await
            .unwrap();
        let (events, failed) = read_events(response).await;
        assert!(failed);
        assert_eq!(contents(&events).concat(), "mock reply to: hello world");
        assert!(!events.iter().any(|e| e == "[DONE]"));
    }

    #[tokio::test]
    async fn cut_non_stream_sends_half_a_body() {
        let up = MockProvider::openai()
            .then(Fault::CutStream { after_chunks: 0 })
            .start()
            .await;
        let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.is_err());
    }

    #[tokio::test]
    async fn delay_holds_the_response_headers() {
        let up = MockProvider::openai()
            .then(Fault::Delay(Duration::from_millis(150)))
            .start()
            .await;
        let started = std::time::Instant::now();
        let response = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn replay_answers_with_the_recording_byte_for_byte() {
        let whole = Bytes::from_static(b"{\"type\": \"error\",\"error\":{\"type\":\"overloaded_error\"}}  ");
        let stream = Bytes::from(
            "event: message_start\ndata: {\"type\":\"message_start\"}\n\n: comment\r\n\r\n".repeat(12)
                + "event: content_block_delta\ndata: {\"text\":\"h\u{e9}llo \u{1f600}\"}\n\n",
        );
        let up = MockProvider::anthropic()
            .then(Fault::replay(529, "application/json", whole.clone()))
            .then(Fault::replay(
                200,
                "text/event-stream; charset=utf-8",
                stream.clone(),
            ))
            .start()
            .await;
        // No `anthropic-version`, an unknown path: a replay answers whatever was asked.
        let response = post(&up, "/anything", &json!({})).await.unwrap();
        assert_eq!(response.status(), 529);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["content-length"], whole.len().to_string());
        assert_eq!(response.bytes().await.unwrap(), whole);

        let response = post(&up, "/v1/messages", &json!({})).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=utf-8"
        );
        assert!(response.headers().get("content-length").is_none());
        let mut received = Vec::new();
        let mut pieces = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk.unwrap());
            pieces += 1;
        }
        assert_eq!(received, stream, "the body ends cleanly, every byte as recorded");
        assert!(pieces > 1, "the stream arrives in pieces");
        assert_eq!(up.calls(), 2);
        assert_eq!(up.abandoned_streams(), 0);
    }

    #[tokio::test]
    async fn replay_as_the_default_answers_every_request() {
        let up = MockProvider::gemini()
            .default_fault(Fault::replay(503, "application/json", "{}"))
            .start()
            .await;
        for _ in 0..3 {
            let response = post(&up, "/v1beta/models/m:generateContent", &json!({}))
                .await
                .unwrap();
            assert_eq!(response.status(), 503);
        }
        assert_eq!(up.calls(), 3);
    }

    #[test]
    fn replayed_streams_are_cut_at_arbitrary_bytes() {
        for len in [0, 1, 2, 3, 63, 64, 65, 200, 1000, 4096, 50_000] {
            let body: Bytes = (0..len).map(|i| b"ab\n"[i % 3]).collect::<Vec<u8>>().into();
            let pieces = split_arbitrarily(&body);
            assert_eq!(pieces.concat(), body.to_vec(), "len {len}");
            assert_eq!(pieces, split_arbitrarily(&body), "deterministic");
            if len >= 2 {
                assert!(pieces.len() >= 2, "len {len}: {} pieces", pieces.len());
                assert!(pieces.iter().all(|p| !p.is_empty()), "len {len}");
            }
        }
        // Cuts fall inside events, not only at their boundaries.
        let events = Bytes::from("data: {\"x\":1}\n\n".repeat(40));
        let pieces = split_arbitrarily(&events);
        assert!(pieces.iter().any(|p| !p.ends_with(b"\n\n")), "{pieces:?}");
    }

    #[tokio::test]
    async fn calls_are_counted_per_path() {
        let up = MockProvider::openai().start().await;
        post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap();
        post(&up, "/v1/chat/completions", &chat_body(true, None))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        post(&up, "/v1/embeddings", &json!({ "model": "e", "input": "x" }))
            .await
            .unwrap();
        let models = reqwest::get(format!("{}/models", up.base_url())).await.unwrap();
        assert_eq!(models.status(), 200);
        let unknown = post(&up, "/v1/nope", &json!({})).await.unwrap();
        assert_eq!(unknown.status(), 404);
        let body: Value = unknown.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("/v1/nope"));

        assert_eq!(up.calls(), 5);
        assert_eq!(up.calls_to("/v1/chat/completions"), 2);
        assert_eq!(up.calls_to("/v1/embeddings"), 1);
        assert_eq!(up.calls_to("/v1/models"), 1);
        assert_eq!(up.calls_to("/v1/nope"), 1);
        let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            [
                "/v1/chat/completions",
                "/v1/chat/completions",
                "/v1/embeddings",
                "/v1/models",
                "/v1/nope"
            ]
        );
        up.clear_requests();
        assert_eq!(up.calls(), 0);
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_openai_error() {
        let up = MockProvider::openai().start().await;
        let response = reqwest::Client::new()
            .post(format!("{}/chat/completions", up.base_url()))
            .header("content-type", "application/json")
            .body("{\"model\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let missing = post(&up, "/v1/chat/completions", &json!({ "model": "m" }))
            .await
            .unwrap();
        assert_eq!(missing.status(), 400);
    }

    #[tokio::test]
    async fn headers_and_bodies_are_recorded() {
        let up = MockProvider::openai().start().await;
        reqwest::Client::new()
            .post(format!("{}/chat/completions?x=1", up.base_url()))
            .bearer_auth("sk-upstream")
            .json(&chat_body(false, None))
            .send()
            .await
            .unwrap();
        let request = up.last_request().unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.query.as_deref(), Some("x=1"));
        assert_eq!(request.header("authorization"), Some("Bearer sk-upstream"));
        assert_eq!(up.last_json().unwrap()["model"], "gpt-test");
    }

    #[tokio::test]
    async fn require_api_key_rejects_other_keys() {
        let up = MockProvider::openai().require_api_key("sk-good").start().await;
        let client = reqwest::Client::new();
        let url = format!("{}/chat/completions", up.base_url());
        let denied = client
            .post(&url)
            .bearer_auth("sk-bad")
            .json(&chat_body(false, None))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        let body: Value = denied.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        let allowed = client
            .post(&url)
            .bearer_auth("sk-good")
            .json(&chat_body(false, None))
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status(), 200);
    }

    #[tokio::test]
    async fn requests_in_flight_are_counted_until_their_body_ends() {
        let up = MockProvider::openai()
            .latency(Duration::from_millis(150))
            .stream_chunks(3)
            .chunk_delay(Duration::from_millis(50))
            .start()
            .await;
        let calls = (0..3).map(|i| {
            let up = &up;
            async move {
                post(up, "/v1/chat/completions", &chat_body(i % 2 == 0, None))
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(calls).await;
        assert_eq!(up.max_in_flight(), 3);
        assert_eq!(up.in_flight(), 0);
        up.reset_max_in_flight();
        post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(up.max_in_flight(), 1);
    }

    #[tokio::test]
    async fn latency_and_fixed_reply() {
        let up = MockProvider::openai()
            .latency(Duration::from_millis(100))
            .reply("fixed answer")
            .start()
            .await;
        let started = std::time::Instant::now();
        let body: Value = post(&up, "/v1/chat/completions", &chat_body(false, None))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(body["choices"][0]["message"]["content"], "fixed answer");
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }

    #[tokio::test]
    async fn tool_calls_when_tools_are_offered() {
        let up = MockProvider::openai().stream_chunks(2).start().await;
        let mut body = chat_body(false, None);
        body["tools"] =
            json!([{ "type": "function", "function": { "name": "get_weather", "parameters": {} } }]);
        let answer: Value = post(&up, "/v1/chat/completions", &body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let choice = &answer["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({ "input": "hello world" }));

        body["stream"] = json!(true);
        let (events, _) = read_events(post(&up, "/v1/chat/completions", &body).await.unwrap()).await;
        let chunks: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "get_weather"
        );
        let streamed: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                    .as_str()
            })
            .collect();
        assert_eq!(streamed, call["function"]["arguments"].as_str().unwrap());
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );

        // A tool result ends the loop with text.
        body["stream"] = json!(false);
        body["messages"] = json!([
            { "role": "user", "content": "weather?" },
            { "role": "assistant", "content": null, "tool_calls": [call] },
            { "role": "tool", "tool_call_id": call["id"], "content": "sunny" }
        ]);
        let answer: Value = post(&up, "/v1/chat/completions", &body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "mock reply to: sunny");
    }

    #[tokio::test]
    async fn legacy_completions() {
        let up = MockProvider::openai().start().await;
        let body = json!({ "model": "instruct", "prompt": "say hi" });
        let answer: Value = post(&up, "/v1/completions", &body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["choices"][0]["text"], "mock reply to: say hi");
        assert_eq!(answer["usage"]["prompt_tokens"], 2);
        assert_eq!(answer["usage"]["completion_tokens"], 5);

        let body = json!({ "model": "instruct", "prompt": "say hi", "stream": true,
                           "stream_options": { "include_usage": true } });
        let (events, failed) = read_events(post(&up, "/v1/completions", &body).await.unwrap()).await;
        assert!(!failed);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/text")?.as_str())
            .collect();
        assert_eq!(text, "mock reply to: say hi");
        assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 7);
    }

    #[tokio::test]
    async fn embeddings_are_deterministic() {
        let up = MockProvider::openai().start().await;
        let one: Value = post(&up, "/v1/embeddings", &json!({ "model": "e", "input": "abc" }))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(one["object"], "list");
        assert_eq!(one["model"], "e");
        assert_eq!(one["data"][0]["object"], "embedding");
        assert_eq!(one["data"][0]["embedding"].as_array().unwrap().len(), 8);
        assert_eq!(one["usage"], json!({ "prompt_tokens": 1, "total_tokens": 1 }));

        let many: Value = post(
            &up,
            "/v1/embeddings",
            &json!({ "model": "e", "input": ["abc", "defgh"] }),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(many["data"][0]["embedding"], one["data"][0]["embedding"]);
        assert_ne!(many["data"][1]["embedding"], one["data"][0]["embedding"]);
        assert_eq!(many["data"][1]["index"], 1);
        assert_eq!(many["usage"]["prompt_tokens"], 2);

        let b64: Value = post(
            &up,
            "/v1/embeddings",
            &json!({ "model": "e", "input": "abc", "encoding_format": "base64" }),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(
            b64["data"][0]["embedding"].as_str().unwrap().len(),
            44,
            "8 f32 = 32 bytes"
        );
    }

    #[tokio::test]
    async fn models_are_listed() {
        let up = MockProvider::openai().models(["a", "b"]).start().await;
        let body: Value = reqwest::get(format!("{}/models", up.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["object"], "list");
        let ids: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(body["data"][0]["object"], "model");
    }

    #[tokio::test]
    async fn an_abandoned_stream_is_counted() {
        let up = MockProvider::openai()
            .chunk_delay(Duration::from_millis(20))
            .stream_chunks(50)
            .start()
            .await;
        let response = post(&up, "/v1/chat/completions", &chat_body(true, None))
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        body.next().await.unwrap().unwrap();
        drop(body);
        for _ in 0..200 {
            if up.abandoned_streams() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the abandoned stream was not noticed");
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let up = MockProvider::openai().start().await;
        let addr = up.addr();
        up.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    fn anthropic_body(stream: bool) -> Value {
        json!({
            "model": "claude-test",
            "max_tokens": 100,
            "system": "be brief",
            "messages": [{ "role": "user", "content": [{ "type": "text", "text": "hello world" }] }],
            "stream": stream
        })
    }

    async fn anthropic_post(up: &MockProvider, path: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", up.base_url()))
            .header("x-api-key", "sk-ant")
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn anthropic_non_stream_message() {
        let up = MockProvider::anthropic().require_api_key("sk-ant").start().await;
        let response = anthropic_post(&up, "/messages", &anthropic_body(false)).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-test");
        assert_eq!(
            body["content"],
            json!([{ "type": "text", "text": "mock reply to: hello world" }])
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["usage"]["input_tokens"], 5);
        assert_eq!(body["usage"]["output_tokens"], 5);

        let count: Value = anthropic_post(&up, "/messages/count_tokens", &anthropic_body(false))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(count, json!({ "input_tokens": 5 }));
    }

    #[tokio::test]
    async fn anthropic_stream_event_sequence() {
        let up = MockProvider::anthropic().stream_chunks(2).start().await;
        let response = anthropic_post(&up, "/messages", &anthropic_body(true)).await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (events, failed) = read_events(response).await;
        assert!(!failed);
        let events: Vec<Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let text: String = events
            .iter()
            .filter_map(|e| e.pointer("/delta/text")?.as_str())
            .collect();
        assert_eq!(text, "mock reply to: hello world");
        assert_eq!(events[0]["message"]["usage"]["input_tokens"], 5);
        assert_eq!(events[6]["usage"]["output_tokens"], 5);
        assert_eq!(events[6]["delta"]["stop_reason"], "end_turn");
    }

    #[tokio::test]
    async fn anthropic_errors_and_required_header() {
        let up = MockProvider::anthropic().then(Fault::Status(529)).start().await;
        let response = anthropic_post(&up, "/messages", &anthropic_body(false)).await;
        assert_eq!(response.status(), 529);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded (mock)" } })
        );

        let response = reqwest::Client::new()
            .post(format!("{}/messages", up.base_url()))
            .json(&anthropic_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "anthropic-version is required");
    }

    #[tokio::test]
    async fn anthropic_tool_use() {
        let up = MockProvider::anthropic().start().await;
        let mut body = anthropic_body(false);
        body["tools"] = json!([{ "name": "get_weather", "input_schema": { "type": "object" } }]);
        let answer: Value = anthropic_post(&up, "/messages", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer["stop_reason"], "tool_use");
        assert_eq!(answer["content"][0]["type"], "tool_use");
        assert_eq!(answer["content"][0]["name"], "get_weather");
        assert_eq!(answer["content"][0]["input"], json!({ "input": "hello world" }));
    }

    fn gemini_body() -> Value {
        json!({
            "systemInstruction": { "parts": [{ "text": "be brief" }] },
            "contents": [{ "role": "user", "parts": [{ "text": "hello world" }] }]
        })
    }

    async fn gemini_post(up: &MockProvider, action: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/models/gemini-test:{action}", up.base_url()))
            .header("x-goog-api-key", "g-key")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn gemini_generate_content_has_the_gemini_shape() {
        let up = MockProvider::gemini().require_api_key("g-key").start().await;
        assert_eq!(up.base_url(), format!("http://{}/v1beta", up.addr()));
        let response = gemini_post(&up, "generateContent", &gemini_body()).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["candidates"][0]["content"],
            json!({ "parts": [{ "text": "mock reply to: hello world" }], "role": "model" })
        );
        assert_eq!(body["candidates"][0]["finishReason"], "STOP");
        assert_eq!(body["modelVersion"], "gemini-test");
        assert!(body["responseId"].is_string());
        // ("be brief" + "hello world") = 19 chars -> 5 tokens; the reply has 5 words.
        assert_eq!(body["usageMetadata"]["promptTokenCount"], 5);
        assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 5);
        assert_eq!(body["usageMetadata"]["totalTokenCount"], 10);
        assert_eq!(up.calls_to("/v1beta/models/gemini-test:generateContent"), 1);

        let mut limited = gemini_body();
        limited["generationConfig"] = json!({ "maxOutputTokens": 2 });
        let body: Value = gemini_post(&up, "generateContent", &limited)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["candidates"][0]["content"]["parts"][0]["text"], "mock reply");
        assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");

        let count: Value = gemini_post(
            &up,
            "countTokens",
            &json!({ "contents": gemini_body()["contents"] }),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(count["totalTokens"], 3);

        let models: Value = reqwest::Client::new()
            .get(format!("{}/models", up.base_url()))
            .header("x-goog-api-key", "g-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(models["models"][0]["name"], "models/gemini-2.5-flash");
    }

    #[tokio::test]
    async fn gemini_api_key_by_header_or_query() {
        let up = MockProvider::gemini().require_api_key("g-key").start().await;
        let url = format!("{}/models/m:generateContent", up.base_url());
        let client = reqwest::Client::new();
        let denied = client
            .post(&url)
            .header("x-goog-api-key", "wrong")
            .json(&gemini_body())
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        let body: Value = denied.json().await.unwrap();
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(body["error"]["details"][0]["reason"], "API_KEY_INVALID");
        let by_query = client
            .post(format!("{url}?key=g-key"))
            .json(&gemini_body())
            .send()
            .await
            .unwrap();
        assert_eq!(by_query.status(), 200);
    }

    #[tokio::test]
    async fn gemini_stream_is_sse_with_finish_and_usage_last() {
        let up = MockProvider::gemini().stream_chunks(2).start().await;
        let response = gemini_post(&up, "streamGenerateContent?alt=sse", &gemini_body()).await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (events, failed) = read_events(response).await;
        assert!(!failed);
        let chunks: Vec<Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(chunks.len(), 3, "2 content chunks, then the finish");
        let text: String = chunks
            .iter()
            .filter_map(|c| c.pointer("/candidates/0/content/parts/0/text")?.as_str())
            .collect();
        assert_eq!(text, "mock reply to: hello world");
        assert!(
            chunks[..2]
                .iter()
                .all(|c| c["candidates"][0].get("finishReason").is_none())
        );
        let last = &chunks[2];
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 5);
        assert_eq!(last["usageMetadata"]["totalTokenCount"], 10);
        assert!(chunks.iter().all(|c| c["responseId"] == chunks[0]["responseId"]));
        assert_eq!(up.calls_to("/v1beta/models/gemini-test:streamGenerateContent"), 1);
        assert_eq!(up.last_request().unwrap().query.as_deref(), Some("alt=sse"));

        let array: Value = gemini_post(&up, "streamGenerateContent", &gemini_body())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            array.as_array().unwrap().len(),
            3,
            "without alt=sse: one JSON array"
        );
    }

    #[tokio::test]
    async fn gemini_cut_stream_never_sends_the_finish() {
        let up = MockProvider::gemini()
            .then(Fault::CutStream { after_chunks: 99 })
            .start()
            .await;
        let response = gemini_post(&up, "streamGenerateContent?alt=sse", &gemini_body()).await;
        let (events, failed) = read_events(response).await;
        assert!(failed);
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| !e.contains("finishReason")));
    }

    #[tokio::test]
    async fn gemini_function_calls_when_tools_are_offered() {
        let up = MockProvider::gemini().start().await;
        let mut body = gemini_body();
        body["tools"] = json!([{ "functionDeclarations": [
            { "name": "get_weather", "parameters": { "type": "object", "properties": { "city": { "type": "string" } } } },
            { "name": "get_time" }
        ] }]);
        let answer: Value = gemini_post(&up, "generateContent", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["candidates"][0]["content"]["parts"],
            json!([{ "functionCall": { "name": "get_weather", "args": { "input": "hello world" } } }])
        );
        assert_eq!(answer["candidates"][0]["finishReason"], "STOP");

        body["toolConfig"] =
            json!({ "functionCallingConfig": { "mode": "ANY", "allowedFunctionNames": ["get_time"] } });
        let answer: Value = gemini_post(&up, "generateContent", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
            "get_time"
        );

        body["toolConfig"] = json!({ "functionCallingConfig": { "mode": "NONE" } });
        let answer: Value = gemini_post(&up, "generateContent", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][0]["text"],
            "mock reply to: hello world"
        );

        body["toolConfig"] = json!({ "functionCallingConfig": { "mode": "AUTO" } });
        body["contents"] = json!([
            { "role": "user", "parts": [{ "text": "weather?" }] },
            { "role": "model", "parts": [{ "functionCall": { "name": "get_weather", "args": {} } }] },
            { "role": "user", "parts": [{ "functionResponse": { "name": "get_weather", "response": { "content": "sunny" } } }] }
        ]);
        let answer: Value = gemini_post(&up, "generateContent", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][0]["text"],
            "mock reply to: sunny"
        );

        let mut stream = gemini_body();
        stream["tools"] = json!([{ "functionDeclarations": [{ "name": "get_weather" }] }]);
        let (events, _) = read_events(gemini_post(&up, "streamGenerateContent?alt=sse", &stream).await).await;
        assert_eq!(events.len(), 2, "the call whole, then the finish");
        assert!(events[0].contains("\"functionCall\""));
    }

    #[tokio::test]
    async fn gemini_thoughts_when_asked() {
        let up = MockProvider::gemini().start().await;
        let mut body = gemini_body();
        body["generationConfig"] =
            json!({ "thinkingConfig": { "includeThoughts": true, "thinkingBudget": 128 } });
        let answer: Value = gemini_post(&up, "generateContent", &body)
            .await
            .json()
            .await
            .unwrap();
        let parts = &answer["candidates"][0]["content"]["parts"];
        assert_eq!(
            parts[0],
            json!({ "text": "thinking about: hello world", "thought": true })
        );
        assert_eq!(parts[1]["text"], "mock reply to: hello world");
        assert_eq!(answer["usageMetadata"]["thoughtsTokenCount"], 4);
        assert_eq!(answer["usageMetadata"]["totalTokenCount"], 5 + 5 + 4);
    }

    #[tokio::test]
    async fn gemini_refuses_what_gemini_refuses() {
        let up = MockProvider::gemini().start().await;
        let cases = [
            (
                json!({ "model": "m", "contents": gemini_body()["contents"] }),
                "Unknown name \"model\"",
            ),
            (json!({ "contents": [] }), "contents is not specified"),
            (
                json!({ "contents": [{ "role": "assistant", "parts": [{ "text": "x" }] }] }),
                "valid role",
            ),
            (
                json!({ "contents": [{ "role": "user", "parts": [] }] }),
                "parts must not be empty",
            ),
            (
                json!({ "contents": [{ "role": "user", "parts": [{ "text": "" }] }] }),
                "empty text",
            ),
        ];
        for (body, message) in cases {
            let response = gemini_post(&up, "generateContent", &body).await;
            assert_eq!(response.status(), 400, "{body}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
            assert_eq!(error["error"]["code"], 400);
            assert!(
                error["error"]["message"].as_str().unwrap().contains(message),
                "{error}"
            );
        }
        let unknown = gemini_post(&up, "embedEverything", &gemini_body()).await;
        assert_eq!(unknown.status(), 404);
        let body: Value = unknown.json().await.unwrap();
        assert_eq!(body["error"]["status"], "NOT_FOUND");
    }

    #[tokio::test]
    async fn gemini_scripted_errors() {
        let up = MockProvider::gemini()
            .then(Fault::Status(429).with_retry_after(7))
            .then(Fault::Status(503))
            .then(Fault::Status(500))
            .start()
            .await;
        let limited = gemini_post(&up, "generateContent", &gemini_body()).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "7");
        let body: Value = limited.json().await.unwrap();
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["error"]["code"], 429);
        assert_eq!(body["error"]["details"][0]["retryDelay"], "7s");
        for (status, name) in [(503, "UNAVAILABLE"), (500, "INTERNAL")] {
            let response = gemini_post(&up, "generateContent", &gemini_body()).await;
            assert_eq!(response.status(), status);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["status"], name);
        }
    }

    /// The data plane's Gemini codec and this mock agree: an encoded request is accepted, and the answers
    /// decode (whole and streamed) to the same content.
    #[tokio::test]
    async fn gemini_codec_round_trip() {
        use drover_dataplane::formats::{gemini, ir, sse};

        let up = MockProvider::gemini().stream_chunks(3).start().await;
        let request = ir::ChatRequest {
            model: "alias".into(),
            system: vec![ir::SystemBlock {
                text: "be brief".into(),
                cache_control: None,
            }],
            messages: vec![ir::Message {
                role: ir::Role::User,
                parts: vec![ir::Part::Text {
                    text: "hello world".into(),
                    cache_control: None,
                }],
            }],
            tools: vec![ir::Tool {
                name: "get_weather".into(),
                description: None,
                parameters: json!({ "type": "object", "properties": { "city": { "type": "string" } },
                                    "additionalProperties": false }),
                cache_control: None,
            }],
            tool_choice: Some(ir::ToolChoice::None),
            max_tokens: Some(50),
            ..ir::ChatRequest::default()
        };
        let mut dropped = ir::Dropped::default();
        let body: Value = serde_json::from_slice(&gemini::encode_request(
            &request,
            "gemini-2.5-flash",
            &mut dropped,
        ))
        .unwrap();
        assert!(dropped.is_empty());

        let whole = gemini_post(&up, "generateContent", &body).await;
        assert_eq!(whole.status(), 200);
        let answer = gemini::decode_response(&whole.bytes().await.unwrap()).unwrap();
        assert_eq!(
            answer.parts,
            [ir::Part::Text {
                text: "mock reply to: hello world".into(),
                cache_control: None
            }]
        );
        assert_eq!(answer.stop, ir::StopReason::EndTurn);
        assert_eq!(answer.usage.input_tokens, 5);
        assert_eq!(answer.usage.output_tokens, 5);

        let streamed = gemini_post(&up, "streamGenerateContent?alt=sse", &body).await;
        let raw = streamed.bytes().await.unwrap();
        let mut decoder = gemini::StreamDecoder::new();
        let mut events = Vec::new();
        for event in sse::parse_events(&raw) {
            events.extend(decoder.decode(&event).unwrap());
        }
        events.extend(decoder.finish());
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                ir::StreamEvent::Delta {
                    delta: ir::Delta::Text(t),
                    ..
                } => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "mock reply to: hello world");
        assert_eq!(
            &events[events.len() - 3..],
            [
                ir::StreamEvent::Finish {
                    stop: ir::StopReason::EndTurn
                },
                ir::StreamEvent::Usage(answer.usage),
                ir::StreamEvent::Done
            ]
        );

        let limited = MockProvider::gemini().then(Fault::Status(429)).start().await;
        let response = gemini_post(&limited, "generateContent", &body).await;
        let status = response.status().as_u16();
        let error = gemini::decode_error(status, &response.bytes().await.unwrap());
        assert_eq!((error.status, error.kind), (429, ir::ErrorKind::RateLimit));
    }

    async fn azure_post(
        up: &MockProvider,
        path_and_query: &str,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path_and_query}", up.base_url()))
            .header("api-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn azure_serves_deployments_with_api_version_and_api_key() {
        let up = MockProvider::azure().require_api_key("az-key").start().await;
        assert_eq!(up.base_url(), up.origin());
        let chat = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
        let mut body = chat_body(false, None);
        body.as_object_mut().unwrap().remove("model");
        let response = azure_post(&up, chat, "az-key", &body).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], "my-gpt", "the deployment names the model");
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "mock reply to: hello world"
        );
        assert_eq!(up.calls_to("/openai/deployments/my-gpt/chat/completions"), 1);
        assert_eq!(
            up.last_request().unwrap().query.as_deref(),
            Some("api-version=2024-10-21")
        );

        let (events, failed) =
            read_events(azure_post(&up, chat, "az-key", &chat_body(true, None)).await).await;
        assert!(!failed);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert_eq!(contents(&events).concat(), "mock reply to: hello world");
        assert!(events[0].contains("\"model\":\"my-gpt\""));

        let embeddings: Value = azure_post(
            &up,
            "/openai/deployments/emb/embeddings?api-version=2024-10-21",
            "az-key",
            &json!({ "input": "abc" }),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(embeddings["model"], "emb");
        assert_eq!(embeddings["data"][0]["object"], "embedding");
        let completion: Value = azure_post(
            &up,
            "/openai/deployments/instruct/completions?api-version=2024-10-21",
            "az-key",
            &json!({ "prompt": "say hi" }),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(completion["choices"][0]["text"], "mock reply to: say hi");

        let denied = azure_post(&up, chat, "wrong", &body).await;
        assert_eq!(denied.status(), 401);
        let error: Value = denied.json().await.unwrap();
        assert_eq!(error["error"]["code"], "401");
        let bearer = reqwest::Client::new()
            .post(format!("{}{chat}", up.origin()))
            .bearer_auth("az-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 401, "Azure keys travel in api-key");
    }

    #[tokio::test]
    async fn azure_requires_api_version_and_known_paths() {
        let up = MockProvider::azure().start().await;
        let missing = azure_post(
            &up,
            "/openai/deployments/d/chat/completions",
            "k",
            &chat_body(false, None),
        )
        .await;
        assert_eq!(missing.status(), 400);
        let error: Value = missing.json().await.unwrap();
        assert_eq!(error["error"]["code"], "MissingApiVersionParameter");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("api-version")
        );
        let empty = azure_post(
            &up,
            "/openai/deployments/d/chat/completions?api-version=",
            "k",
            &chat_body(false, None),
        )
        .await;
        assert_eq!(empty.status(), 400);

        for path in [
            "/v1/chat/completions?api-version=1",
            "/openai/deployments/d/images?api-version=1",
        ] {
            let response = azure_post(&up, path, "k", &chat_body(false, None)).await;
            assert_eq!(response.status(), 404, "{path}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(
                error["error"],
                json!({ "code": "404", "message": "Resource not found" })
            );
        }
    }

    #[tokio::test]
    async fn azure_scripted_errors() {
        let up = MockProvider::azure()
            .then(Fault::Status(429).with_retry_after(3))
            .then(Fault::Status(500))
            .start()
            .await;
        let chat = "/openai/deployments/d/chat/completions?api-version=2024-10-21";
        let limited = azure_post(&up, chat, "k", &chat_body(false, None)).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "3");
        let body: Value = limited.json().await.unwrap();
        assert_eq!(body["error"]["code"], "429");
        assert!(body["error"]["message"].is_string());
        let failed = azure_post(&up, chat, "k", &chat_body(false, None)).await;
        assert_eq!(failed.status(), 500);
        let body: Value = failed.json().await.unwrap();
        assert_eq!(body["error"]["type"], "server_error");
    }
}
