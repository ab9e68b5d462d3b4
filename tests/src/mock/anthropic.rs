//! The Anthropic Messages wire format as the mock speaks it: `POST /v1/messages` (text and tool use, stream
//! and non-stream; with `output_config.format` a JSON text), `POST /v1/messages/count_tokens`, `GET /v1/models`, and `{"type":"error",...}` bodies.
//! Like the real API it requires the `anthropic-version` header and `max_tokens`. Renders answers only; faults,
//! latency and the transport live in `mock.rs`.

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Map, Value, json};

use super::{ErrorReply, Reply, ReplyOptions, reply};

/// Renders the answer to one request. Unknown paths are 404, a body that is not a JSON object or a missing
/// `anthropic-version` header is 400, all with an Anthropic error body.
pub fn route(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    options: &ReplyOptions,
    seq: u64,
) -> Reply {
    let known = matches!(
        (method, path),
        (&Method::POST, "/v1/messages" | "/v1/messages/count_tokens") | (&Method::GET, "/v1/models")
    );
    if !known {
        return error(404, "not_found_error", "Not Found");
    }
    if !headers.contains_key("anthropic-version") {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    match path {
        "/v1/messages" => with_object(body, |req| messages(req, options, seq)),
        "/v1/messages/count_tokens" => with_object(body, count_tokens),
        _ => models(options),
    }
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`.
pub fn error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "type": "error", "error": { "type": kind, "message": message } }),
    )
}

/// The error a scripted [`Fault::Status`](super::Fault::Status) answers with, typed the way Anthropic types it.
pub(crate) fn scripted_error(fault: &ErrorReply) -> Reply {
    let (kind, default_message) = match fault.status {
        400 => ("invalid_request_error", "Invalid request (mock)."),
        401 => ("authentication_error", "invalid x-api-key (mock)"),
        403 => ("permission_error", "Permission denied (mock)."),
        404 => ("not_found_error", "Not found (mock)."),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed size (mock).",
        ),
        429 => ("rate_limit_error", "Rate limit reached (mock)."),
        529 => ("overloaded_error", "Overloaded (mock)"),
        _ => ("api_error", "Internal server error (mock)"),
    };
    let mut reply = error(
        fault.status,
        kind,
        fault.message.as_deref().unwrap_or(default_message),
    );
    reply.set_retry_after(fault.retry_after);
    reply
}

/// The 401 for a request without the expected `x-api-key`.
pub(crate) fn unauthorized() -> Reply {
    error(401, "authentication_error", "invalid x-api-key (mock)")
}

fn with_object(body: &[u8], render: impl FnOnce(&Map<String, Value>) -> Reply) -> Reply {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(req)) => render(&req),
        Ok(_) => error(
            400,
            "invalid_request_error",
            "The request body must be a JSON object.",
        ),
        Err(e) => error(
            400,
            "invalid_request_error",
            &format!("The request body is not valid JSON: {e}"),
        ),
    }
}

/// Text of a `content` (or `system`): a string, or blocks whose `text` counts, tool results included.
fn texts(content: Option<&Value>) -> Vec<&str> {
    match content {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .flat_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("tool_result") => texts(b.get("content")),
                _ => b.get("text").and_then(Value::as_str).into_iter().collect(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn input_chars(req: &Map<String, Value>, messages: &[Value]) -> usize {
    let system = texts(req.get("system")).into_iter();
    let turns = messages.iter().flat_map(|m| texts(m.get("content")));
    system.chain(turns).map(|t| t.chars().count()).sum()
}

fn has_tool_result(message: Option<&Value>) -> bool {
    message
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        })
}

/// The tool the mock calls: none without tools, with `tool_choice.type == "none"`, or when the last message
/// carries a tool result; the named one for `{"type":"tool"}`; else the first tool offered.
fn tool_to_call(req: &Map<String, Value>, last: Option<&Value>) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    if tools.is_empty() || has_tool_result(last) {
        return None;
    }
    let choice = req.get("tool_choice");
    match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        Some("none") => None,
        Some("tool") => choice?.get("name")?.as_str().map(str::to_owned),
        _ => tools
            .iter()
            .find_map(|t| t.get("name")?.as_str().map(str::to_owned)),
    }
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output
    })
}

fn event(value: &Value) -> Bytes {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("message");
    Bytes::from(format!("event: {kind}\ndata: {value}\n\n"))
}

fn messages(req: &Map<String, Value>, options: &ReplyOptions, seq: u64) -> Reply {
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return error(400, "invalid_request_error", "model: Field required");
    };
    let Some(max_tokens) = req.get("max_tokens").and_then(Value::as_u64) else {
        return error(400, "invalid_request_error", "max_tokens: Field required");
    };
    let Some(turns) = req.get("messages").and_then(Value::as_array) else {
        return error(400, "invalid_request_error", "messages: Field required");
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let last = turns.last();
    let prompt = texts(last.and_then(|m| m.get("content"))).join("\n");
    let input_tokens = reply::tokens_for_chars(input_chars(req, turns));
    let id = format!("msg_mock_{seq}");

    // (content block, stop reason, output tokens, stream pieces, delta builder)
    let (block, stop_reason, output_tokens, pieces, delta_kind) = match tool_to_call(req, last) {
        Some(name) => {
            let input = json!({ "input": reply::text(&prompt, None).trim_start_matches("mock reply to: ") });
            let json_text = input.to_string();
            let tokens = reply::tokens_for_chars(name.chars().count() + json_text.chars().count());
            let block = json!({ "type": "tool_use", "id": format!("toolu_mock_{seq}"), "name": name, "input": input });
            (
                block,
                "tool_use",
                tokens,
                reply::pieces(&json_text, options.stream_chunks),
                "input_json_delta",
            )
        }
        // Native structured output: the text is the JSON the tool would have been given.
        None if req
            .get("output_config")
            .and_then(|c| c.get("format"))
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str)
            == Some("json_schema") =>
        {
            let text = json!({ "input": reply::text(&prompt, None).trim_start_matches("mock reply to: ") })
                .to_string();
            let tokens = reply::tokens_for_reply(&text);
            let pieces = reply::pieces(&text, options.stream_chunks);
            (
                json!({ "type": "text", "text": text }),
                "end_turn",
                tokens,
                pieces,
                "text_delta",
            )
        }
        None => {
            let (text, truncated) =
                reply::limit(reply::text(&prompt, options.reply.as_deref()), Some(max_tokens));
            let stop = if truncated { "max_tokens" } else { "end_turn" };
            let tokens = reply::tokens_for_reply(&text);
            let pieces = reply::pieces(&text, options.stream_chunks);
            (
                json!({ "type": "text", "text": text }),
                stop,
                tokens,
                pieces,
                "text_delta",
            )
        }
    };

    if !stream {
        return Reply::json(
            200,
            &json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": usage(input_tokens, output_tokens)
            }),
        );
    }

    let start_block = match block.get("type").and_then(Value::as_str) {
        Some("tool_use") => {
            json!({ "type": "tool_use", "id": block["id"], "name": block["name"], "input": {} })
        }
        _ => json!({ "type": "text", "text": "" }),
    };
    let mut frames = vec![
        event(&json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(input_tokens, 1)
            }
        })),
        event(&json!({ "type": "content_block_start", "index": 0, "content_block": start_block })),
        event(&json!({ "type": "ping" })),
    ];
    let prelude = frames.len();
    let field = if delta_kind == "text_delta" {
        "text"
    } else {
        "partial_json"
    };
    frames.extend(pieces.iter().map(|p| {
        event(
            &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": delta_kind, field: p } }),
        )
    }));
    frames.push(event(&json!({ "type": "content_block_stop", "index": 0 })));
    frames.push(event(&json!({
        "type": "message_delta",
        "delta": { "stop_reason": stop_reason, "stop_sequence": null },
        "usage": { "output_tokens": output_tokens }
    })));
    frames.push(event(&json!({ "type": "message_stop" })));
    Reply::Events {
        frames,
        prelude,
        content: pieces.len(),
    }
}

fn count_tokens(req: &Map<String, Value>) -> Reply {
    if req.get("model").and_then(Value::as_str).is_none() {
        return error(400, "invalid_request_error", "model: Field required");
    }
    let Some(turns) = req.get("messages").and_then(Value::as_array) else {
        return error(400, "invalid_request_error", "messages: Field required");
    };
    Reply::json(
        200,
        &json!({ "input_tokens": reply::tokens_for_chars(input_chars(req, turns)) }),
    )
}

fn models(options: &ReplyOptions) -> Reply {
    let data: Vec<Value> = options
        .models
        .iter()
        .map(|id| json!({ "type": "model", "id": id, "display_name": id, "created_at": "2025-01-01T00:00:00Z" }))
        .collect();
    Reply::json(
        200,
        &json!({
            "data": data,
            "has_more": false,
            "first_id": options.models.first(),
            "last_id": options.models.last()
        }),
    )
}
