//! The translation conformance corpus: every file under `tests/corpus/` is one recorded exchange, run against
//! a real gateway and a mock provider that replays the recorded upstream answer byte for byte.
//!
//! Files live in one directory per pair, `tests/corpus/{ingress}-to-{provider}/{case}.json`, and hold:
//!
//! * `name`, `ingress` (`openai`: chat completions, `anthropic`: messages, `responses`: OpenAI's Responses
//!   API), `provider` (`openai` | `azure` | `anthropic` | `gemini`, and `openai-compatible` for Responses
//!   callers; [`PAIRS`] lists the pairs), optional `description` and `target_model` (the provider's model; a
//!   default per kind otherwise).
//! * `request`: the caller's `body` (its `model` is replaced by the case's route) and optional `headers`
//!   (`anthropic-version: 2023-06-01` is added for Anthropic callers that name none).
//! * `upstream`: the recorded provider answer, `status`, `content_type` and `body`: a JSON value (sent
//!   compact), a string (sent as is), or for streams an array of events, each string sent followed by a blank
//!   line and each `{"raw": "..."}` sent exactly (a cut event, odd line endings).
//! * Expectations, each a JSON subset (see [`subset`]): `expect_upstream_request` (the body sent upstream;
//!   `null`: nothing may be sent), `expect_upstream_headers`, `expect_status` (default 200),
//!   `expect_response` (the caller's JSON answer) or `expect_events` (a stream, reduced by
//!   [`reduce_openai`] / [`reduce_anthropic`] / [`reduce_responses`]), `expect_dropped` (the features of
//!   `x-drover-dropped`, as a set; none expected when absent) and `expect_upstream_calls`.
//! * `known_failure`: a reason; the case still runs and is reported, but does not fail the test.
//!
//! Checked for every case besides its expectations: the upstream path and credentials for the pair
//! ([`upstream_route`]); the caller's content type; for same-format pairs (OpenAI chat to OpenAI or Azure,
//! Anthropic to Anthropic, Responses to OpenAI's or Azure's Responses API) that the request went upstream
//! byte for byte with only `model` replaced and that the answer came back byte for byte; for streams, that
//! they keep their format's grammar, end with their terminal event or an error event in the caller's format,
//! never quietly, and that nothing follows either.
//!
//! Every case runs against one gateway, with a mock and a provider of its own so that breakers and
//! cool-downs never leak between cases. All failures are reported together, each with its diff.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "test code"
)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use drover_proto::pb::ProviderKind;
use drover_tests::mock::{MockBuilder, RecordedRequest};
use drover_tests::{Fault, Gateway, MockProvider, Reply};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Case files every pair directory must have (by file-name prefix).
const REQUIRED: &[&str] = &[
    "plain-text",
    "system-prompt",
    "multi-turn",
    "parallel-tool-calls",
    "tool-results",
    "images",
    "stream-tool-deltas",
    "stream-error-event",
    "stream-cut",
    "error-status",
];

/// The caller formats, each with the provider kinds the corpus covers for it.
const PAIRS: &[(&str, &[&str])] = &[
    ("openai", &["openai", "azure", "anthropic", "gemini"]),
    ("anthropic", &["openai", "azure", "anthropic", "gemini"]),
    (
        "responses",
        &["openai", "azure", "anthropic", "gemini", "openai-compatible"],
    ),
];

/// The Responses events that end a stream.
const RESPONSES_TERMINAL: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
];

/// Cases run at once (each has its own mock, provider and route).
const PARALLEL_CASES: usize = 4;

/// How long one case may take before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for readers of the corpus")]
    description: Option<String>,
    ingress: String,
    provider: String,
    #[serde(default)]
    target_model: Option<String>,
    request: CaseRequest,
    upstream: CaseUpstream,
    #[serde(default, deserialize_with = "present")]
    expect_upstream_request: Option<Value>,
    #[serde(default)]
    expect_upstream_headers: Option<Map<String, Value>>,
    #[serde(default)]
    expect_upstream_calls: Option<usize>,
    #[serde(default = "ok_status")]
    expect_status: u16,
    #[serde(default)]
    expect_response: Option<Value>,
    #[serde(default)]
    expect_events: Option<Value>,
    #[serde(default)]
    expect_dropped: Vec<String>,
    #[serde(default)]
    known_failure: Option<String>,
}

/// A field that may be `null` and must still count as given.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default)]
    headers: Map<String, Value>,
    body: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseUpstream {
    status: u16,
    content_type: String,
    body: Value,
}

impl CaseUpstream {
    fn is_stream(&self) -> bool {
        self.content_type.starts_with("text/event-stream")
    }

    /// The recorded bytes.
    fn bytes(&self) -> Result<Bytes, String> {
        match (&self.body, self.is_stream()) {
            (Value::String(raw), _) => Ok(Bytes::from(raw.clone())),
            (Value::Array(events), true) => {
                let mut out = String::new();
                for event in events {
                    match event {
                        Value::String(e) => {
                            out.push_str(e);
                            out.push_str("\n\n");
                        }
                        Value::Object(o) if o.len() == 1 && o.get("raw").is_some_and(Value::is_string) => {
                            out.push_str(o["raw"].as_str().unwrap_or_default());
                        }
                        other => return Err(format!("upstream.body: not an event: {other}")),
                    }
                }
                Ok(Bytes::from(out))
            }
            (value, _) => Ok(Bytes::from(serde_json::to_vec(value).map_err(|e| e.to_string())?)),
        }
    }
}

/// A case with where it came from.
struct Loaded {
    path: PathBuf,
    case: Case,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every case file, sorted; files that do not parse are errors.
fn load() -> (Vec<Loaded>, Vec<String>) {
    let mut files = Vec::new();
    let mut dirs = vec![corpus_dir()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Case>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(case) => cases.push(Loaded { path, case }),
            Err(e) => errors.push(format!("{}: {e}", relative(&path))),
        }
    }
    (cases, errors)
}

fn relative(path: &Path) -> String {
    path.strip_prefix(corpus_dir())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// What a case file says about itself that does not need a gateway to check.
fn lint(loaded: &Loaded) -> Vec<String> {
    let case = &loaded.case;
    let mut problems = Vec::new();
    match PAIRS.iter().find(|(ingress, _)| *ingress == case.ingress) {
        None => problems.push(format!("unknown ingress {:?}", case.ingress)),
        Some((_, providers)) if !providers.contains(&case.provider.as_str()) => problems.push(format!(
            "provider {:?} is not covered for {} callers",
            case.provider, case.ingress
        )),
        Some(_) => {}
    }
    let dir = loaded
        .path
        .parent()
        .and_then(Path::file_name)
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pair = format!("{}-to-{}", case.ingress, case.provider);
    if dir != pair {
        problems.push(format!("a {pair} case belongs in corpus/{pair}/, not {dir}/"));
    }
    if case.expect_response.is_some() && case.expect_events.is_some() {
        problems.push("expect_response and expect_events are exclusive".into());
    }
    let stream = case.request.body["stream"] == json!(true);
    if stream && case.expect_status == 200 && case.expect_events.is_none() {
        problems.push("a stream case needs expect_events".into());
    }
    if !stream && case.expect_events.is_some() {
        problems.push("expect_events is for stream requests".into());
    }
    if !stream && case.expect_response.is_none() {
        problems.push("a non-stream case needs expect_response".into());
    }
    if case.expect_upstream_request.is_none() {
        problems.push("expect_upstream_request is required (null: nothing may be sent)".into());
    }
    if let Err(e) = case.upstream.bytes() {
        problems.push(e);
    }
    problems
}

fn kind(provider: &str) -> (ProviderKind, MockBuilder, &'static str) {
    match provider {
        "openai" => (ProviderKind::Openai, MockProvider::openai(), "gpt-4o"),
        "azure" => (ProviderKind::Azure, MockProvider::azure(), "gpt-4o-prod"),
        "anthropic" => (
            ProviderKind::Anthropic,
            MockProvider::anthropic(),
            "claude-sonnet-4-5",
        ),
        "openai-compatible" => (
            ProviderKind::OpenaiCompatible,
            MockProvider::openai(),
            "llama-3.3-70b",
        ),
        _ => (ProviderKind::Gemini, MockProvider::gemini(), "gemini-2.5-flash"),
    }
}

/// Whether the pair relays the caller's format as it is (only `model` replaced).
fn is_passthrough(case: &Case) -> bool {
    matches!(
        (case.ingress.as_str(), case.provider.as_str()),
        ("openai" | "responses", "openai" | "azure") | ("anthropic", "anthropic")
    )
}

/// What one run produced, for the report.
struct Run {
    failures: Vec<String>,
    upstream: Option<RecordedRequest>,
    reply: Option<Reply>,
    reduced: Option<Value>,
}

async fn run_case(gw: &Gateway, n: usize, case: &Case) -> Run {
    let mut run = Run {
        failures: Vec::new(),
        upstream: None,
        reply: None,
        reduced: None,
    };
    let recorded = match case.upstream.bytes() {
        Ok(bytes) => bytes,
        Err(e) => {
            run.failures.push(e);
            return run;
        }
    };
    let (kind, mock, default_model) = kind(&case.provider);
    let target_model = case.target_model.as_deref().unwrap_or(default_model);
    let up = mock
        .default_fault(Fault::replay(
            case.upstream.status,
            case.upstream.content_type.clone(),
            recorded.clone(),
        ))
        .start()
        .await;
    let provider = format!("p{n}");
    let alias = format!("case-{n}");
    gw.provider_kind(&provider, kind, &up.base_url()).await;
    gw.route(&alias, &[&format!("{provider}/{target_model}")]).await;

    let mut body = case.request.body.clone();
    body["model"] = json!(alias);
    let sent = Bytes::from(serde_json::to_vec(&body).unwrap());
    let mut headers: Vec<(String, String)> = case
        .request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    let path = match case.ingress.as_str() {
        "anthropic" => {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("anthropic-version"))
            {
                headers.push(("anthropic-version".into(), "2023-06-01".into()));
            }
            "/v1/messages"
        }
        "responses" => "/v1/responses",
        _ => "/v1/chat/completions",
    };
    let header_refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let answered = tokio::time::timeout(
        CASE_TIMEOUT,
        gw.send_to(&gw.url(), "POST", path, &header_refs, sent.clone()),
    )
    .await;
    let Ok(reply) = answered else {
        run.failures
            .push(format!("no complete answer within {CASE_TIMEOUT:?}"));
        return run;
    };
    let stream = body["stream"] == json!(true);
    check_upstream(case, &up, target_model, &body, &mut run);
    check_reply(case, &reply, stream, &recorded, &mut run);
    run.reply = Some(reply);
    run
}

/// Where a case's request must go upstream: the path, a query parameter it must carry, and the auth header
/// with its value.
fn upstream_route(
    case: &Case,
    model: &str,
    stream: bool,
) -> (String, Option<&'static str>, (&'static str, &'static str)) {
    let bearer = ("authorization", "Bearer sk-test-provider-key");
    match (case.ingress.as_str(), case.provider.as_str()) {
        // OpenAI's Responses API, relayed as it is.
        ("responses", "openai") => ("/v1/responses".to_owned(), None, bearer),
        // Azure's v1 Responses API: one path for every deployment, which the body's `model` names.
        ("responses", "azure") => (
            "/openai/v1/responses".to_owned(),
            None,
            ("api-key", "sk-test-provider-key"),
        ),
        // Chat-completions hosts get the Responses call translated to chat completions.
        (_, "openai" | "openai-compatible") => ("/v1/chat/completions".to_owned(), None, bearer),
        (_, "azure") => (
            format!("/openai/deployments/{model}/chat/completions"),
            Some("api-version="),
            ("api-key", "sk-test-provider-key"),
        ),
        (_, "anthropic") => (
            "/v1/messages".to_owned(),
            None,
            ("x-api-key", "sk-test-provider-key"),
        ),
        _ if stream => (
            format!("/v1beta/models/{model}:streamGenerateContent"),
            Some("alt=sse"),
            ("x-goog-api-key", "sk-test-provider-key"),
        ),
        _ => (
            format!("/v1beta/models/{model}:generateContent"),
            None,
            ("x-goog-api-key", "sk-test-provider-key"),
        ),
    }
}

fn check_upstream(case: &Case, up: &MockProvider, model: &str, caller_body: &Value, run: &mut Run) {
    let requests = up.requests();
    let failures = &mut run.failures;
    let expected = case.expect_upstream_request.as_ref().unwrap_or(&Value::Null);
    if expected.is_null() {
        if !requests.is_empty() {
            failures.push(format!(
                "nothing should have gone upstream, {} request(s) did",
                requests.len()
            ));
        }
        return;
    }
    let Some(first) = requests.first() else {
        failures.push("nothing went upstream".into());
        return;
    };
    run.upstream = Some(first.clone());
    let retryable = case.upstream.status == 429 || case.upstream.status >= 500;
    match case.expect_upstream_calls {
        Some(n) if requests.len() != n => {
            failures.push(format!("{} upstream call(s), expected {n}", requests.len()));
        }
        None if !retryable && requests.len() != 1 => {
            failures.push(format!("{} upstream calls, expected 1", requests.len()));
        }
        _ => {}
    }

    let stream = caller_body["stream"] == json!(true);
    let query = first.query.clone().unwrap_or_default();
    let (want_path, want_query, auth) = upstream_route(case, model, stream);
    if first.path != want_path {
        failures.push(format!("upstream path {:?}, expected {want_path:?}", first.path));
    }
    if let Some(q) = want_query
        && !query.split('&').any(|kv| kv.starts_with(q))
    {
        failures.push(format!("upstream query {query:?} lacks {q}"));
    }
    if first.header(auth.0) != Some(auth.1) {
        failures.push(format!(
            "upstream {} header is {:?}",
            auth.0,
            first.header(auth.0)
        ));
    }
    if case.provider == "anthropic" && first.header("anthropic-version").is_none() {
        failures.push("no anthropic-version header upstream".into());
    }
    if let Some(want) = &case.expect_upstream_headers {
        for (name, value) in want {
            let got = first.header(name).map(|v| Value::from(v.to_owned()));
            match (value, got) {
                (Value::String(s), None) if s == "$absent" => {}
                (_, None) => failures.push(format!("upstream header {name} missing, expected {value}")),
                (Value::String(s), Some(_)) if s == "$absent" => {
                    failures.push(format!("upstream header {name} should be absent"));
                }
                (_, Some(got)) => subset(value, &got, &format!("upstream header {name}"), failures),
            }
        }
    }

    let Some(sent) = first.json() else {
        failures.push(format!(
            "upstream body is not JSON: {}",
            String::from_utf8_lossy(&first.body)
        ));
        return;
    };
    subset(expected, &sent, "upstream request", failures);
    if is_passthrough(case) {
        let mut want = caller_body.clone();
        want["model"] = json!(model);
        let mut want = serde_json::to_vec(&want).unwrap();
        // Every chat stream is metered: the gateway asks for the usage chunk when the caller did not
        // (and strips it from the answer), by adding `stream_options` up front. A Responses stream
        // always ends with its usage, so nothing is added to it.
        let openai_stream = caller_body["stream"] == json!(true) && case.ingress == "openai";
        if openai_stream && caller_body["stream_options"]["include_usage"] != json!(true) {
            if caller_body.get("stream_options").is_none() {
                let mut injected = br#"{"stream_options":{"include_usage":true},"#.to_vec();
                injected.extend_from_slice(&want[1..]);
                want = injected;
            } else {
                let mut with = caller_body.clone();
                with["model"] = json!(model);
                with["stream_options"]["include_usage"] = json!(true);
                want = serde_json::to_vec(&with).unwrap();
            }
        }
        if first.body.as_ref() != want.as_slice() {
            failures.push(format!(
                "same-format request not relayed byte for byte with only model replaced:\n      sent     {}\n      expected {}",
                String::from_utf8_lossy(&first.body),
                String::from_utf8_lossy(&want)
            ));
        }
    }
}

fn check_reply(case: &Case, reply: &Reply, stream: bool, recorded: &Bytes, run: &mut Run) {
    let failures = &mut run.failures;
    if reply.status.as_u16() != case.expect_status {
        failures.push(format!(
            "status {}, expected {}",
            reply.status.as_u16(),
            case.expect_status
        ));
    }
    let content_type = reply.header("content-type").unwrap_or_default();
    let is_stream = stream && reply.status.is_success();
    let want_type = if is_stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    if !content_type.starts_with(want_type) {
        failures.push(format!("content-type {content_type:?}, expected {want_type}"));
    }

    let dropped: BTreeSet<String> = reply
        .header("x-drover-dropped")
        .map(|h| {
            h.split(',')
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let want_dropped: BTreeSet<String> = case.expect_dropped.iter().cloned().collect();
    if dropped != want_dropped {
        failures.push(format!("x-drover-dropped {dropped:?}, expected {want_dropped:?}"));
    }

    let retryable = case.upstream.status == 429 || case.upstream.status >= 500;
    if is_stream {
        let (reduced, violations) = match case.ingress.as_str() {
            "anthropic" => reduce_anthropic(&reply.text()),
            "responses" => reduce_responses(&reply.text()),
            _ => reduce_openai(&reply.text()),
        };
        for v in violations {
            failures.push(format!("stream: {v}"));
        }
        if let Some(want) = &case.expect_events {
            subset(want, &reduced, "events", failures);
        }
        if is_passthrough(case) && case.upstream.status == 200 {
            if ends_properly(&case.ingress, recorded) {
                if reply.body != *recorded {
                    failures.push("same-format stream not relayed byte for byte".into());
                }
            } else {
                // Whole events are relayed as they came, a cut one is held back, and an error event follows.
                let whole = recorded
                    .windows(2)
                    .rposition(|w| w == b"\n\n")
                    .map_or(0, |at| at + 2);
                if !reply.body.starts_with(&recorded[..whole]) {
                    failures.push("same-format stream not relayed byte for byte up to the cut".into());
                }
            }
        }
        run.reduced = Some(reduced);
    } else {
        match serde_json::from_slice::<Value>(&reply.body) {
            Ok(answer) => {
                if let Some(want) = &case.expect_response {
                    subset(want, &answer, "response", failures);
                }
            }
            Err(e) => failures.push(format!("answer is not JSON ({e})")),
        }
        if is_passthrough(case) && !retryable && reply.body != *recorded {
            failures.push("same-format answer not relayed byte for byte".into());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subset matching
// ---------------------------------------------------------------------------------------------

/// Whether `actual` contains `expected`, recording every difference under `path`.
///
/// * Objects match key by key; keys `expected` does not name are not checked. A key whose expected value is
///   `"$absent"` must be missing (or `null`).
/// * Arrays match element by element and must have the same length, unless the last expected element is
///   `"..."`: then the expected elements are a prefix.
/// * `"$any"` matches any value but `null`; `{"$json": X}` matches a string holding JSON that contains `X`.
/// * Numbers compare by value (`1` equals `1.0`); other scalars exactly.
fn subset(expected: &Value, actual: &Value, path: &str, diffs: &mut Vec<String>) {
    match expected {
        Value::String(s) if s == "$any" => {
            if actual.is_null() {
                diffs.push(format!("{path}: expected a value, got null"));
            }
        }
        Value::Object(want) if want.len() == 1 && want.contains_key("$json") => match actual {
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(parsed) => subset(&want["$json"], &parsed, &format!("{path}(json)"), diffs),
                Err(e) => diffs.push(format!("{path}: expected JSON text, got {text:?} ({e})")),
            },
            other => diffs.push(format!("{path}: expected a JSON string, got {}", short(other))),
        },
        Value::Object(want) => {
            let Value::Object(got) = actual else {
                diffs.push(format!("{path}: expected an object, got {}", short(actual)));
                return;
            };
            for (key, value) in want {
                let at = format!("{path}.{key}");
                match (value, got.get(key)) {
                    (Value::String(s), None | Some(Value::Null)) if s == "$absent" => {}
                    (Value::String(s), Some(v)) if s == "$absent" => {
                        diffs.push(format!("{at}: expected absent, got {}", short(v)));
                    }
                    (_, None) => diffs.push(format!("{at}: missing, expected {}", short(value))),
                    (_, Some(v)) => subset(value, v, &at, diffs),
                }
            }
        }
        Value::Array(want) => {
            let Value::Array(got) = actual else {
                diffs.push(format!("{path}: expected an array, got {}", short(actual)));
                return;
            };
            let (want, prefix) = match want.split_last() {
                Some((Value::String(s), rest)) if s == "..." => (rest, true),
                _ => (want.as_slice(), false),
            };
            if got.len() < want.len() || (!prefix && got.len() != want.len()) {
                diffs.push(format!(
                    "{path}: expected {}{} elements, got {}: {}",
                    if prefix { "at least " } else { "" },
                    want.len(),
                    got.len(),
                    short(actual)
                ));
                return;
            }
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                subset(w, g, &format!("{path}[{i}]"), diffs);
            }
        }
        Value::Number(want) => {
            let same = actual.as_f64().zip(want.as_f64()).is_some_and(|(a, b)| a == b);
            if !same {
                diffs.push(format!("{path}: expected {want}, got {}", short(actual)));
            }
        }
        _ => {
            if expected != actual {
                diffs.push(format!(
                    "{path}: expected {}, got {}",
                    short(expected),
                    short(actual)
                ));
            }
        }
    }
}

/// A value for a message, shortened.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 400 {
        format!("{}…", s.chars().take(400).collect::<String>())
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Stream reductions
// ---------------------------------------------------------------------------------------------

/// `(event name, data)` of every event of an SSE body.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data: Option<String> = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim_start().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(v);
                        }
                        None => data = Some(v.to_owned()),
                    }
                }
            }
            (name.is_some() || data.is_some()).then(|| (name, data.unwrap_or_default()))
        })
        .collect()
}

/// Whether a recorded stream of this format ends the way the format ends a stream: OpenAI chat with `[DONE]`
/// or an error chunk, Anthropic with `message_stop` or an `error` event, Responses with one of
/// [`RESPONSES_TERMINAL`].
fn ends_properly(format: &str, recorded: &[u8]) -> bool {
    sse_events(&String::from_utf8_lossy(recorded))
        .iter()
        .any(|(name, data)| match format {
            "anthropic" => matches!(name.as_deref(), Some("message_stop" | "error")),
            "responses" => {
                let kind = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_owned));
                [name.as_deref(), kind.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|k| RESPONSES_TERMINAL.contains(&k))
            }
            _ => {
                data == "[DONE]"
                    || serde_json::from_str::<Value>(data).is_ok_and(|v| v.get("error").is_some())
            }
        })
}

/// An OpenAI chat stream as `{role, text, reasoning, signatures, tool_calls: [{index, id, name,
/// arguments}], finish_reason, usage, error, errors, done}`: text and arguments concatenated over chunks
/// (arguments parsed when they are JSON), the last non-null finish reason and usage, the first error's
/// `error` object and the number of error events, whether `[DONE]` came. Also the stream's violations.
fn reduce_openai(text: &str) -> (Value, Vec<String>) {
    let mut violations = Vec::new();
    let mut role = Value::Null;
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut signatures = Vec::new();
    let mut calls: Vec<(Value, String, String)> = Vec::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    let mut error = Value::Null;
    let mut errors = 0;
    let mut done = false;
    for (i, (_, data)) in sse_events(text).into_iter().enumerate() {
        if done {
            violations.push(format!("event {i} after [DONE]: {data}"));
            continue;
        }
        if data == "[DONE]" {
            if errors > 0 {
                violations.push("[DONE] after an error event".into());
            }
            done = true;
            continue;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            violations.push(format!("event {i} is not JSON: {data}"));
            continue;
        };
        if let Some(e) = chunk.get("error") {
            if errors == 0 {
                error = e.clone();
            }
            errors += 1;
            continue;
        }
        if errors > 0 {
            violations.push(format!("chunk after an error event: {data}"));
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if role.is_null() && delta["role"].is_string() {
            role = delta["role"].clone();
        }
        if let Some(t) = delta["content"].as_str() {
            content.push_str(t);
        }
        if let Some(t) = delta["reasoning_content"].as_str() {
            reasoning.push_str(t);
        }
        for block in delta["thinking_blocks"].as_array().into_iter().flatten() {
            if let Some(s) = block["signature"].as_str().filter(|s| !s.is_empty()) {
                signatures.push(Value::from(s));
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let Some(index) = call["index"].as_u64() else {
                violations.push(format!("tool call fragment without index: {call}"));
                continue;
            };
            let index = usize::try_from(index).unwrap_or(usize::MAX);
            if index > calls.len() {
                violations.push(format!("tool call index {index} skips one"));
                continue;
            }
            if index == calls.len() {
                calls.push((Value::Null, String::new(), String::new()));
            }
            let slot = &mut calls[index];
            if slot.0.is_null() && call["id"].is_string() {
                slot.0 = call["id"].clone();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                slot.1.push_str(name);
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                slot.2.push_str(args);
            }
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    if !done && errors == 0 {
        violations.push("the stream ended without [DONE] or an error event".into());
    }
    let tool_calls: Vec<Value> = calls
        .into_iter()
        .enumerate()
        .map(|(index, (id, name, args))| {
            let arguments = serde_json::from_str::<Value>(&args).unwrap_or(Value::String(args));
            json!({ "index": index, "id": id, "name": name, "arguments": arguments })
        })
        .collect();
    let reduced = json!({
        "role": role,
        "text": content,
        "reasoning": reasoning,
        "signatures": signatures,
        "tool_calls": tool_calls,
        "finish_reason": finish,
        "usage": usage,
        "error": error,
        "errors": errors,
        "done": done,
    });
    (reduced, violations)
}

/// An Anthropic stream as `{events, id, model, text, thinking, signatures, tool_uses: [{id, name, input}],
/// stop_reason, stop_sequence, usage, error, done}`. `events` lists event names without `ping`, block starts
/// and deltas typed (`content_block_start:text`, `content_block_delta:text_delta`), with a run of
/// identical deltas counted once. `usage` is `message_start`'s overlaid with `message_delta`'s. Also the
/// stream's violations of the event grammar.
fn reduce_anthropic(text: &str) -> (Value, Vec<String>) {
    let mut violations = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut id = Value::Null;
    let mut model = Value::Null;
    let mut content = String::new();
    let mut thinking = String::new();
    let mut signatures: Vec<String> = Vec::new();
    let mut tools: Vec<(Value, Value, Value, String)> = Vec::new();
    let mut stop_reason = Value::Null;
    let mut stop_sequence = Value::Null;
    let mut usage = Map::new();
    let mut error = Value::Null;
    let mut done = false;
    let mut ended = false;
    let mut started = false;
    let mut blocks = 0usize;
    let mut open: Option<(usize, String)> = None;
    for (name, data) in sse_events(text) {
        let Some(name) = name else {
            violations.push(format!("event without a name: {data}"));
            continue;
        };
        if name == "ping" {
            continue;
        }
        if ended {
            violations.push(format!("{name} after the end of the stream"));
            continue;
        }
        let Ok(data) = serde_json::from_str::<Value>(&data) else {
            violations.push(format!("{name}: data is not JSON"));
            continue;
        };
        if data["type"] != json!(name) {
            violations.push(format!("event {name} carries type {}", data["type"]));
        }
        if !started && name != "message_start" && name != "error" {
            violations.push(format!("{name} before message_start"));
        }
        let entry = match name.as_str() {
            "content_block_start" => format!(
                "content_block_start:{}",
                data["content_block"]["type"].as_str().unwrap_or("?")
            ),
            "content_block_delta" => format!(
                "content_block_delta:{}",
                data["delta"]["type"].as_str().unwrap_or("?")
            ),
            _ => name.clone(),
        };
        if !(entry.starts_with("content_block_delta:") && names.last() == Some(&entry)) {
            names.push(entry);
        }
        let index = data["index"].as_u64().and_then(|i| usize::try_from(i).ok());
        match name.as_str() {
            "message_start" => {
                if started {
                    violations.push("a second message_start".into());
                }
                started = true;
                id = data["message"]["id"].clone();
                model = data["message"]["model"].clone();
                if let Some(u) = data["message"]["usage"].as_object() {
                    usage.extend(u.clone());
                }
            }
            "content_block_start" => {
                if let Some((i, _)) = &open {
                    violations.push(format!("block {index:?} starts while block {i} is open"));
                }
                if index != Some(blocks) {
                    violations.push(format!("block start index {index:?}, expected {blocks}"));
                }
                blocks += 1;
                let block = &data["content_block"];
                let kind = block["type"].as_str().unwrap_or_default().to_owned();
                match kind.as_str() {
                    "text" => content.push_str(block["text"].as_str().unwrap_or_default()),
                    "thinking" => {
                        thinking.push_str(block["thinking"].as_str().unwrap_or_default());
                        signatures.push(block["signature"].as_str().unwrap_or_default().to_owned());
                    }
                    "tool_use" => tools.push((
                        block["id"].clone(),
                        block["name"].clone(),
                        block["input"].clone(),
                        String::new(),
                    )),
                    _ => {}
                }
                open = Some((index.unwrap_or(usize::MAX), kind));
            }
            "content_block_delta" => {
                if open.as_ref().map(|(i, _)| *i) != index {
                    violations.push(format!("delta for block {index:?}, which is not open"));
                }
                let delta = &data["delta"];
                let piece = |key: &str| delta[key].as_str().unwrap_or_default().to_owned();
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => content.push_str(&piece("text")),
                    "thinking_delta" => thinking.push_str(&piece("thinking")),
                    "signature_delta" => match signatures.last_mut() {
                        Some(s) => s.push_str(&piece("signature")),
                        None => violations.push("signature_delta outside a thinking block".into()),
                    },
                    "input_json_delta" => match tools.last_mut() {
                        Some(t) => t.3.push_str(&piece("partial_json")),
                        None => violations.push("input_json_delta outside a tool_use block".into()),
                    },
                    other => violations.push(format!("unknown delta type {other:?}")),
                }
            }
            "content_block_stop" => match open.take() {
                Some((i, _)) if Some(i) == index => {}
                other => violations.push(format!(
                    "block stop for {index:?}, open block {:?}",
                    other.map(|(i, _)| i)
                )),
            },
            "message_delta" => {
                if let Some((i, _)) = &open {
                    violations.push(format!("message_delta while block {i} is open"));
                }
                stop_reason = data["delta"]["stop_reason"].clone();
                stop_sequence = data["delta"]["stop_sequence"].clone();
                if let Some(u) = data["usage"].as_object() {
                    usage.extend(u.clone());
                }
            }
            "message_stop" => {
                done = true;
                ended = true;
            }
            "error" => {
                error = data["error"].clone();
                ended = true;
            }
            other => violations.push(format!("unknown event {other}")),
        }
    }
    if !ended {
        violations.push("the stream ended without message_stop or an error event".into());
    }
    let tool_uses: Vec<Value> = tools
        .into_iter()
        .map(|(id, name, input, partial)| {
            let input = if partial.is_empty() {
                input
            } else {
                serde_json::from_str::<Value>(&partial).unwrap_or(Value::String(partial))
            };
            json!({ "id": id, "name": name, "input": input })
        })
        .collect();
    let reduced = json!({
        "events": names,
        "id": id,
        "model": model,
        "text": content,
        "thinking": thinking,
        "signatures": signatures,
        "tool_uses": tool_uses,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": Value::Object(usage),
        "error": error,
        "done": done,
    });
    (reduced, violations)
}

/// One output item of a Responses stream, as the reducer follows it.
struct StreamItem {
    id: Value,
    kind: String,
    /// Text, reasoning or arguments streamed into it.
    text: String,
    /// Arguments given whole by `response.function_call_arguments.done`.
    done_arguments: Option<String>,
    call_id: Value,
    name: Value,
    /// Content parts added to a message.
    parts: u64,
    open: bool,
}

/// A Responses stream as `{events, id, model, status, text, reasoning, function_calls: [{call_id, name,
/// arguments}], output_types, usage, incomplete_details, error, done}`. `events` lists event names with a run
/// of identical deltas counted once; `text` and `reasoning` join the output text and reasoning (summary)
/// deltas; a call's `arguments` are its deltas (or its `.done` arguments when none came), parsed when they are
/// JSON; `output_types` are the types of the output items in the order they were added; `status`, `usage`
/// and `incomplete_details` are the final response's; `error` is the `error` event (without `type` and
/// `sequence_number`) or the failed response's `error`; `done` says the stream ended with
/// `response.completed` or `response.incomplete`. Also the stream's violations of the event grammar:
/// `type` must be the SSE event name, `sequence_number` counts from 0 without a gap, `response.created`
/// comes first, deltas only for items added and not yet done (by `output_index` and `item_id`) and content
/// parts added (by `content_index`), nothing after the terminal event, which must come, and the final
/// response holds the items that were streamed.
fn reduce_responses(text: &str) -> (Value, Vec<String>) {
    let mut violations = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut id = Value::Null;
    let mut model = Value::Null;
    let mut status = Value::Null;
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut items: Vec<StreamItem> = Vec::new();
    let mut usage = Value::Null;
    let mut incomplete = Value::Null;
    let mut error = Value::Null;
    let mut done = false;
    let mut ended = false;
    let mut started = false;
    let mut sequence = 0u64;
    for (name, data) in sse_events(text) {
        let Ok(data) = serde_json::from_str::<Value>(&data) else {
            violations.push(format!(
                "{}: data is not JSON: {data}",
                name.as_deref().unwrap_or("event")
            ));
            continue;
        };
        let Some(kind) = data["type"].as_str().map(str::to_owned) else {
            violations.push(format!("event without a type: {data}"));
            continue;
        };
        if let Some(name) = &name
            && *name != kind
        {
            violations.push(format!("event {name} carries type {kind}"));
        }
        if ended {
            violations.push(format!("{kind} after the end of the stream"));
            continue;
        }
        match data["sequence_number"].as_u64() {
            Some(n) => {
                if n != sequence {
                    violations.push(format!("{kind}: sequence_number {n}, expected {sequence}"));
                }
                sequence = n + 1;
            }
            None => {
                violations.push(format!("{kind} without a sequence_number"));
                sequence += 1;
            }
        }
        if !started && kind != "response.created" && kind != "error" {
            violations.push(format!("{kind} before response.created"));
        }
        if !(kind.ends_with(".delta") && names.last() == Some(&kind)) {
            names.push(kind.clone());
        }

        // The open item an item event is about, checked against `output_index`, `item_id`, its
        // `content_index` and the item types it may be about (`want`; any when empty).
        let item_at = |violations: &mut Vec<String>, want: &[&str]| -> Option<usize> {
            let index = data["output_index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok());
            let Some(at) = index.filter(|i| *i < items.len()) else {
                violations.push(format!("{kind} for output_index {index:?}, which was not added"));
                return None;
            };
            let item = &items[at];
            if data.get("item_id").is_some() && data["item_id"] != item.id {
                violations.push(format!(
                    "{kind} names item {} at output_index {at}, which is {}",
                    data["item_id"], item.id
                ));
            }
            if !item.open {
                violations.push(format!("{kind} for item {at}, which is done"));
            }
            if !want.is_empty() && !want.contains(&item.kind.as_str()) {
                violations.push(format!("{kind} for item {at}, a {}", item.kind));
            }
            let part = data["content_index"].as_u64();
            if kind != "response.content_part.added"
                && let Some(part) = part.filter(|p| *p >= item.parts)
            {
                violations.push(format!(
                    "{kind} for content part {part} of item {at}, which was not added"
                ));
            }
            Some(at)
        };
        let piece = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "response.created" | "response.in_progress" => {
                if kind == "response.created" {
                    if started {
                        violations.push("a second response.created".into());
                    }
                    started = true;
                    id = data["response"]["id"].clone();
                    model = data["response"]["model"].clone();
                } else if data["response"]["id"] != id {
                    violations.push(format!("{kind} for response {}", data["response"]["id"]));
                }
                status = data["response"]["status"].clone();
            }
            "response.output_item.added" => {
                let item = &data["item"];
                let index = data["output_index"].as_u64();
                if index != u64::try_from(items.len()).ok() {
                    violations.push(format!(
                        "output_item.added at output_index {index:?}, expected {}",
                        items.len()
                    ));
                }
                if !item["id"].is_string() {
                    violations.push(format!("output item without an id: {item}"));
                }
                items.push(StreamItem {
                    id: item["id"].clone(),
                    kind: item["type"].as_str().unwrap_or("?").to_owned(),
                    text: String::new(),
                    done_arguments: None,
                    call_id: item["call_id"].clone(),
                    name: item["name"].clone(),
                    parts: 0,
                    open: true,
                });
            }
            "response.content_part.added" => {
                if let Some(at) = item_at(&mut violations, &["message"]) {
                    let part = data["content_index"].as_u64();
                    if part != Some(items[at].parts) {
                        violations.push(format!(
                            "content_part.added at content_index {part:?}, expected {}",
                            items[at].parts
                        ));
                    }
                    items[at].parts += 1;
                }
            }
            "response.content_part.done" => {
                item_at(&mut violations, &["message"]);
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let Some(at) = item_at(&mut violations, &["message"]) {
                    let delta = piece("delta");
                    items[at].text.push_str(&delta);
                    if kind == "response.output_text.delta" {
                        content.push_str(&delta);
                    }
                }
            }
            "response.output_text.done" => {
                if let Some(at) = item_at(&mut violations, &["message"])
                    && data["text"] != json!(items[at].text)
                {
                    violations.push(format!(
                        "output_text.done says {}, the deltas said {:?}",
                        data["text"], items[at].text
                    ));
                }
            }
            "response.refusal.done" => {
                item_at(&mut violations, &["message"]);
            }
            "response.function_call_arguments.delta" => {
                if let Some(at) = item_at(&mut violations, &["function_call"]) {
                    items[at].text.push_str(&piece("delta"));
                }
            }
            "response.function_call_arguments.done" => {
                if let Some(at) = item_at(&mut violations, &["function_call"]) {
                    let whole = piece("arguments");
                    if !items[at].text.is_empty() && whole != items[at].text {
                        violations.push(format!(
                            "function_call_arguments.done says {whole:?}, the deltas said {:?}",
                            items[at].text
                        ));
                    }
                    items[at].done_arguments = Some(whole);
                }
            }
            "response.reasoning_summary_part.added"
            | "response.reasoning_summary_part.done"
            | "response.reasoning_summary_text.done"
            | "response.reasoning_text.done" => {
                item_at(&mut violations, &["reasoning"]);
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if item_at(&mut violations, &["reasoning"]).is_some() {
                    reasoning.push_str(&piece("delta"));
                }
            }
            "response.output_item.done" => {
                if let Some(at) = item_at(&mut violations, &[]) {
                    items[at].open = false;
                    if data["item"]["id"] != items[at].id {
                        violations.push(format!(
                            "output_item.done for item {}, added as {}",
                            data["item"]["id"], items[at].id
                        ));
                    }
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                ended = true;
                let response = &data["response"];
                if response["id"] != id {
                    violations.push(format!("{kind} for response {}, created as {id}", response["id"]));
                }
                status = response["status"].clone();
                usage = response["usage"].clone();
                incomplete = response["incomplete_details"].clone();
                if kind == "response.failed" {
                    error = response["error"].clone();
                } else {
                    done = true;
                    if let Some(at) = items.iter().position(|i| i.open) {
                        violations.push(format!("{kind} while item {at} is open"));
                    }
                    let streamed: Vec<&Value> = items.iter().map(|i| &i.id).collect();
                    let output: Vec<&Value> = response["output"]
                        .as_array()
                        .map(|o| o.iter().map(|i| &i["id"]).collect())
                        .unwrap_or_default();
                    if output != streamed {
                        violations.push(format!(
                            "{kind} holds output items {output:?}, the stream added {streamed:?}"
                        ));
                    }
                }
            }
            "error" => {
                ended = true;
                let mut e = data.as_object().cloned().unwrap_or_default();
                e.remove("type");
                e.remove("sequence_number");
                error = Value::Object(e);
            }
            // Events of hosted tools and annotations, which the reduction does not follow.
            other if other.starts_with("response.") => {}
            other => violations.push(format!("unknown event {other}")),
        }
    }
    if !ended {
        violations.push(format!(
            "the stream ended without one of {}",
            RESPONSES_TERMINAL.join(", ")
        ));
    }
    let output_types: Vec<&str> = items.iter().map(|i| i.kind.as_str()).collect();
    let function_calls: Vec<Value> = items
        .iter()
        .filter(|i| i.kind == "function_call")
        .map(|i| {
            let args = match (&i.done_arguments, i.text.is_empty()) {
                (Some(whole), true) => whole.clone(),
                _ => i.text.clone(),
            };
            let arguments = serde_json::from_str::<Value>(&args).unwrap_or(Value::String(args));
            json!({ "call_id": i.call_id, "name": i.name, "arguments": arguments })
        })
        .collect();
    let reduced = json!({
        "events": names,
        "id": id,
        "model": model,
        "status": status,
        "text": content,
        "reasoning": reasoning,
        "function_calls": function_calls,
        "output_types": output_types,
        "usage": usage,
        "incomplete_details": incomplete,
        "error": error,
        "done": done,
    });
    (reduced, violations)
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn report(out: &mut String, name: &str, file: &str, run: &Run) {
    let _ = writeln!(out, "\n✗ {name}  ({file})");
    for f in &run.failures {
        let _ = writeln!(out, "    - {f}");
    }
    if let Some(up) = &run.upstream {
        let _ = writeln!(
            out,
            "    sent upstream: {} {}{}\n      {}",
            up.method,
            up.path,
            up.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default(),
            String::from_utf8_lossy(&up.body)
        );
    }
    if let Some(reply) = &run.reply {
        let _ = writeln!(
            out,
            "    answered: {} (x-drover-dropped: {})",
            reply.status,
            reply.header("x-drover-dropped").unwrap_or("-")
        );
        match &run.reduced {
            Some(reduced) => {
                let _ = writeln!(out, "      reduced: {reduced}");
                let _ = writeln!(out, "      raw: {}", reply.text().replace('\n', "\n           "));
            }
            None => {
                let _ = writeln!(out, "      {}", reply.text());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus() {
    let (cases, errors) = load();
    assert!(
        !cases.is_empty() || !errors.is_empty(),
        "the corpus at {} is empty",
        corpus_dir().display()
    );
    let mut out = String::new();
    let mut failed = 0usize;
    for e in &errors {
        failed += 1;
        let _ = writeln!(out, "\n✗ unreadable case {e}");
    }

    // Coverage: every pair has every required kind of case, and names are unique.
    for (ingress, providers) in PAIRS {
        for provider in *providers {
            let pair = format!("{ingress}-to-{provider}");
            for required in REQUIRED {
                let covered = cases.iter().any(|c| {
                    c.case.ingress == *ingress
                        && c.case.provider == *provider
                        && c.path
                            .file_stem()
                            .is_some_and(|s| s.to_string_lossy().starts_with(required))
                });
                if !covered {
                    failed += 1;
                    let _ = writeln!(out, "\n✗ corpus/{pair}/ has no {required}* case");
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for c in &cases {
        if !names.insert(c.case.name.as_str()) {
            failed += 1;
            let _ = writeln!(out, "\n✗ duplicate case name {:?}", c.case.name);
        }
    }

    let gw = Gateway::builder().start().await;
    let gw = &gw;
    let mut runs: Vec<(usize, Run)> = futures_util::stream::iter(cases.iter().enumerate())
        .map(|(n, loaded)| async move {
            let problems = lint(loaded);
            let run = if problems.is_empty() {
                run_case(gw, n, &loaded.case).await
            } else {
                Run {
                    failures: problems.into_iter().map(|p| format!("case file: {p}")).collect(),
                    upstream: None,
                    reply: None,
                    reduced: None,
                }
            };
            (n, run)
        })
        .buffer_unordered(PARALLEL_CASES)
        .collect()
        .await;
    runs.sort_by_key(|(n, _)| *n);

    let mut known = Vec::new();
    for (loaded, (_, run)) in cases.iter().zip(runs) {
        let case = &loaded.case;
        let file = relative(&loaded.path);
        match (&case.known_failure, run.failures.is_empty()) {
            (Some(reason), true) => known.push(format!(
                "  ! {} passes now: remove its known_failure ({reason})",
                case.name
            )),
            (Some(reason), false) => {
                known.push(format!("  ~ {} (known failure: {reason})", case.name));
                let mut detail = String::new();
                report(&mut detail, &case.name, &file, &run);
                known.push(detail);
            }
            (None, false) => {
                failed += 1;
                report(&mut out, &case.name, &file, &run);
            }
            (None, true) => {}
        }
    }
    println!(
        "conformance corpus: {} case(s), {} failing, {} marked as known failures",
        cases.len(),
        failed,
        cases.iter().filter(|c| c.case.known_failure.is_some()).count()
    );
    for k in &known {
        println!("{k}");
    }
    assert!(failed == 0, "{failed} corpus problem(s):\n{out}");
}
