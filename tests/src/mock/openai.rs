//! The OpenAI wire format as the mock speaks it: `POST /v1/chat/completions` (text and tool calls, stream and
//! non-stream, `stream_options.include_usage`), `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models`,
//! and `{"error":{...}}` bodies. Renders answers only; faults, latency and the transport live in `mock.rs`.

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value, json};

use super::{ErrorReply, Reply, ReplyOptions, reply};

/// Renders the answer to one request. Unknown paths (and known paths with the wrong method) are 404, a body
/// that is not a JSON object is 400, both with an OpenAI error body.
pub fn route(method: &Method, path: &str, body: &[u8], options: &ReplyOptions, seq: u64) -> Reply {
    match (method, path) {
        (&Method::POST, "/v1/chat/completions") => with_object(body, |req| chat(req, options, seq)),
        (&Method::POST, "/v1/completions") => with_object(body, |req| completion(req, options, seq)),
        (&Method::POST, "/v1/embeddings") => with_object(body, embeddings),
        (&Method::GET, "/v1/models") => models(options),
        _ => error(
            404,
            &format!("Invalid URL ({method} {path})"),
            "invalid_request_error",
            None,
            None,
        ),
    }
}

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub fn error(status: u16, message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Reply {
    let body = json!({ "error": { "message": message, "type": kind, "param": param, "code": code } });
    Reply::json(status, &body)
}

/// The error a scripted [`Fault::Status`](super::Fault::Status) answers with, typed the way OpenAI types it.
pub(crate) fn scripted_error(fault: &ErrorReply) -> Reply {
    let (kind, code, default_message) = match fault.status {
        400 => ("invalid_request_error", None, "Invalid request (mock)."),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided (mock).",
        ),
        403 => ("permission_error", None, "Permission denied (mock)."),
        404 => (
            "invalid_request_error",
            Some("model_not_found"),
            "The model does not exist (mock).",
        ),
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached (mock).",
        ),
        503 => (
            "server_error",
            None,
            "The engine is currently overloaded, please try again later (mock).",
        ),
        _ => (
            "server_error",
            None,
            "The server had an error while processing your request (mock).",
        ),
    };
    let message = fault.message.as_deref().unwrap_or(default_message);
    let mut reply = error(fault.status, message, kind, None, code);
    reply.set_retry_after(fault.retry_after);
    reply
}

/// The 401 for a request without the expected `Authorization: Bearer` key.
pub(crate) fn unauthorized() -> Reply {
    error(
        401,
        "Incorrect API key provided (mock).",
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    )
}

fn with_object(body: &[u8], render: impl FnOnce(&Map<String, Value>) -> Reply) -> Reply {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(req)) => render(&req),
        Ok(_) => error(
            400,
            "The request body must be a JSON object.",
            "invalid_request_error",
            None,
            None,
        ),
        Err(e) => error(
            400,
            &format!("We could not parse the JSON body of your request: {e}"),
            "invalid_request_error",
            None,
            None,
        ),
    }
}

fn missing(param: &str) -> Reply {
    error(
        400,
        &format!("Missing required parameter: '{param}'."),
        "invalid_request_error",
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// Text parts of a message `content`: a string, or an array of parts of which those with `text` count.
fn text_parts(content: Option<&Value>) -> Vec<&str> {
    match content {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// What the assistant says: text, or one call to a tool the request offered.
enum Answer {
    Text {
        content: String,
        truncated: bool,
    },
    Tool {
        id: String,
        name: String,
        arguments: String,
    },
}

impl Answer {
    fn completion_tokens(&self) -> u64 {
        match self {
            Answer::Text { content, .. } => reply::tokens_for_reply(content),
            Answer::Tool { name, arguments, .. } => {
                reply::tokens_for_chars(name.chars().count() + arguments.chars().count())
            }
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text { truncated: true, .. } => "length",
            Answer::Text { .. } => "stop",
            Answer::Tool { .. } => "tool_calls",
        }
    }
}

/// The tool the mock calls: none when no tools are offered, `tool_choice` is `"none"`, or the last message
/// is already a tool result; the named one for a forced `tool_choice`; else the first tool offered.
fn tool_to_call(req: &Map<String, Value>, last_role: Option<&str>) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    if tools.is_empty() || last_role == Some("tool") {
        return None;
    }
    match req.get("tool_choice") {
        Some(Value::String(choice)) if choice == "none" => None,
        Some(Value::Object(choice)) => choice.get("function")?.get("name")?.as_str().map(str::to_owned),
        _ => tools
            .iter()
            .find_map(|t| t.get("function")?.get("name")?.as_str().map(str::to_owned)),
    }
}

fn chat(req: &Map<String, Value>, options: &ReplyOptions, seq: u64) -> Reply {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return missing("model");
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return missing("messages");
    };
    if messages.is_empty() {
        return error(
            400,
            "[] is too short - 'messages'",
            "invalid_request_error",
            Some("messages"),
            None,
        );
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream && req.get("stream_options").is_some_and(|v| !v.is_null()) {
        return error(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "invalid_request_error",
            Some("stream_options"),
            None,
        );
    }
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool);
    let include_usage = include_usage.unwrap_or(false);

    let chars: usize = messages
        .iter()
        .flat_map(|m| text_parts(m.get("content")))
        .map(|t| t.chars().count())
        .sum();
    let last = messages.last();
    let prompt = last
        .map(|m| text_parts(m.get("content")).join("\n"))
        .unwrap_or_default();
    let last_role = last.and_then(|m| m.get("role")).and_then(Value::as_str);
    let max = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64);

    let answer = match tool_to_call(req, last_role) {
        Some(name) => Answer::Tool {
            id: format!("call_mock_{seq}"),
            name,
            arguments: json!({ "input": reply::text(&prompt, None).trim_start_matches("mock reply to: ") })
                .to_string(),
        },
        None => {
            let (content, truncated) = reply::limit(reply::text(&prompt, options.reply.as_deref()), max);
            Answer::Text { content, truncated }
        }
    };
    let prompt_tokens = reply::tokens_for_chars(chars);
    let id = format!("chatcmpl-mock-{seq}");
    let created = reply::unix_now();

    if !stream {
        let message = match &answer {
            Answer::Text { content, .. } => {
                json!({ "role": "assistant", "content": content, "refusal": null, "annotations": [] })
            }
            Answer::Tool { id, name, arguments } => json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": id, "type": "function", "function": { "name": name, "arguments": arguments }
                }],
                "refusal": null,
                "annotations": []
            }),
        };
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0, "message": message, "logprobs": null, "finish_reason": answer.finish_reason()
            }],
            "usage": usage(prompt_tokens, answer.completion_tokens()),
            "service_tier": "default",
            "system_fingerprint": "fp_mock"
        });
        return Reply::json(200, &body);
    }

    let chunk = |delta: Value, finish: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]
        });
        if include_usage && let Some(obj) = chunk.as_object_mut() {
            obj.insert("usage".into(), Value::Null);
        }
        sse(&chunk)
    };
    let mut frames = vec![chunk(
        json!({ "role": "assistant", "content": "", "refusal": null }),
        None,
    )];
    let content = match &answer {
        Answer::Text { content, .. } => {
            let pieces = reply::pieces(content, options.stream_chunks);
            frames.extend(pieces.iter().map(|p| chunk(json!({ "content": p }), None)));
            pieces.len()
        }
        Answer::Tool { id, name, arguments } => {
            frames.push(chunk(
                json!({ "tool_calls": [{
                    "index": 0, "id": id, "type": "function", "function": { "name": name, "arguments": "" }
                }] }),
                None,
            ));
            let pieces = reply::pieces(arguments, options.stream_chunks);
            frames.extend(pieces.iter().map(|p| {
                chunk(
                    json!({ "tool_calls": [{ "index": 0, "function": { "arguments": p } }] }),
                    None,
                )
            }));
            pieces.len()
        }
    };
    let prelude = frames.len() - content;
    frames.push(chunk(json!({}), Some(answer.finish_reason())));
    if include_usage {
        frames.push(sse(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage(prompt_tokens, answer.completion_tokens())
        })));
    }
    frames.push(Bytes::from_static(DONE));
    Reply::Events {
        frames,
        prelude,
        content,
    }
}

/// The legacy text completion. `prompt` may be a string or an array (of strings or token ids).
fn completion(req: &Map<String, Value>, options: &ReplyOptions, seq: u64) -> Reply {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return missing("model");
    };
    let prompt = match req.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool);
    let include_usage = include_usage.unwrap_or(false);
    let max = req.get("max_tokens").and_then(Value::as_u64);
    let (text, truncated) = reply::limit(reply::text(&prompt, options.reply.as_deref()), max);
    let finish = if truncated { "length" } else { "stop" };
    let prompt_tokens = reply::tokens_for_chars(prompt.chars().count());
    let completion_tokens = reply::tokens_for_reply(&text);
    let id = format!("cmpl-mock-{seq}");
    let created = reply::unix_now();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });

    if !stream {
        return Reply::json(
            200,
            &json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }],
                "usage": usage
            }),
        );
    }
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut chunk = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices
        });
        if include_usage && let Some(obj) = chunk.as_object_mut() {
            obj.insert("usage".into(), usage.cloned().unwrap_or(Value::Null));
        }
        sse(&chunk)
    };
    let pieces = reply::pieces(&text, options.stream_chunks);
    let mut frames: Vec<Bytes> = pieces
        .iter()
        .map(|p| {
            chunk(
                json!([{ "text": p, "index": 0, "logprobs": null, "finish_reason": null }]),
                None,
            )
        })
        .collect();
    frames.push(chunk(
        json!([{ "text": "", "index": 0, "logprobs": null, "finish_reason": finish }]),
        None,
    ));
    if include_usage {
        frames.push(chunk(json!([]), Some(&usage)));
    }
    frames.push(Bytes::from_static(DONE));
    Reply::Events {
        frames,
        prelude: 0,
        content: pieces.len(),
    }
}

/// Embeddings: `input` is a string or an array (of strings, token ids, or arrays of token ids); each input
/// gets [`DEFAULT_DIMENSIONS`] floats (or `dimensions`), as floats or as `encoding_format: "base64"`.
fn embeddings(req: &Map<String, Value>) -> Reply {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return missing("model");
    };
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::from(items.clone()).to_string()]
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => return missing("input"),
    };
    let dims = req
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_DIMENSIONS)
        .clamp(1, 4096);
    let dims = usize::try_from(dims).unwrap_or(8);
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = reply::embedding(input, dims);
            let embedding = if base64 {
                let raw: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                Value::from(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = reply::tokens_for_chars(inputs.iter().map(|i| i.chars().count()).sum());
    Reply::json(
        200,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens }
        }),
    )
}

/// Length of embedding vectors when the request does not set `dimensions`.
pub const DEFAULT_DIMENSIONS: u64 = 8;

fn models(options: &ReplyOptions) -> Reply {
    let data: Vec<Value> = options
        .models
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 1_700_000_000, "owned_by": "mock" }))
        .collect();
    Reply::json(200, &json!({ "object": "list", "data": data }))
}
