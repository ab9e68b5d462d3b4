//! The Gemini (Generative Language API, `v1beta`) wire format as the mock speaks it:
//! `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE with `?alt=sse`, else one JSON
//! array), `:countTokens`, `GET /v1beta/models`, and `{"error":{"code","message","status"}}` bodies.
//!
//! Like the real API it refuses unknown top-level fields (a `model` in the body, a snake/camel mix-up that does
//! not exist), empty `contents`, empty `parts`, empty text parts and roles other than `user` and `model`, so an
//! encoder that gets the shape wrong fails here as it would against Google. It calls a function when tools are
//! offered (unless `NONE`, or the last turn answers a function call), answers `{"input": "<prompt>"}` as JSON text
//! when `generationConfig.responseMimeType` is `application/json` (structured output), emits a thought part when
//! `thinkingConfig.includeThoughts` is set, and stops at `maxOutputTokens` words. Renders answers only; faults,
//! latency and the transport live in `mock.rs`.

use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value, json};

use super::{ErrorReply, Reply, ReplyOptions, reply};

/// Top-level request fields the real API knows (proto JSON accepts both spellings).
const REQUEST_FIELDS: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
];

/// Renders the answer to one request. Unknown paths are 404 and bad bodies 400, with a Gemini error body.
pub fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    options: &ReplyOptions,
    seq: u64,
) -> Reply {
    if method == Method::GET && path == "/v1beta/models" {
        return models(options);
    }
    let action = path
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.rsplit_once(':'))
        .filter(|(model, _)| !model.is_empty());
    let not_found = || error(404, &format!("Method not found: {method} {path}"));
    let Some((model, action)) = action else {
        return not_found();
    };
    if method != Method::POST {
        return not_found();
    }
    match action {
        "generateContent" => with_object(body, |req| generate(model, req, Mode::Whole, options, seq)),
        "streamGenerateContent" => {
            let sse = query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            let mode = if sse { Mode::Sse } else { Mode::JsonArray };
            with_object(body, |req| generate(model, req, mode, options, seq))
        }
        "countTokens" => with_object(body, count_tokens),
        _ => not_found(),
    }
}

/// The gRPC status name Google puts beside an HTTP status.
fn grpc_status(status: u16) -> &'static str {
    match status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        400..=499 => "FAILED_PRECONDITION",
        500 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// A Gemini error body: `{"error":{"code","message","status"}}`.
pub fn error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "error": { "code": status, "message": message, "status": grpc_status(status) } }),
    )
}

/// The error a scripted [`Fault::Status`](super::Fault::Status) answers with, typed the way Gemini types it. A
/// `retry_after` also becomes a `google.rpc.RetryInfo` detail, as Gemini reports it.
pub(crate) fn scripted_error(fault: &ErrorReply) -> Reply {
    let default_message = match fault.status {
        400 => "Request contains an invalid argument. (mock)",
        401 => "Request had invalid authentication credentials. (mock)",
        403 => "The caller does not have permission (mock)",
        404 => "Requested entity was not found. (mock)",
        413 => "Request payload size exceeds the limit (mock)",
        429 => "Resource has been exhausted (e.g. check quota). (mock)",
        503 => "The model is overloaded. Please try again later. (mock)",
        504 => "Deadline expired before operation could complete. (mock)",
        _ => "An internal error has occurred. (mock)",
    };
    let message = fault.message.as_deref().unwrap_or(default_message);
    let mut body = json!({
        "error": { "code": fault.status, "message": message, "status": grpc_status(fault.status) }
    });
    if let Some(secs) = fault.retry_after {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{secs}s")
        }]);
    }
    let mut reply = Reply::json(fault.status, &body);
    reply.set_retry_after(fault.retry_after);
    reply
}

/// The 401 for a request without the expected `x-goog-api-key` (or `key=` query parameter).
pub(crate) fn unauthorized() -> Reply {
    Reply::json(
        401,
        &json!({ "error": {
            "code": 401,
            "message": "API key not valid. Please pass a valid API key. (mock)",
            "status": "UNAUTHENTICATED",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": { "service": "generativelanguage.googleapis.com" }
            }]
        } }),
    )
}

fn with_object(body: &[u8], render: impl FnOnce(&Map<String, Value>) -> Reply) -> Reply {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(req)) => render(&req),
        Ok(_) => error(400, "Invalid JSON payload received. Expected an object."),
        Err(e) => error(400, &format!("Invalid JSON payload received. {e}")),
    }
}

/// A field under either of its proto JSON names.
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(snake))
}

/// Why the real API would refuse this request, if it would.
fn invalid(req: &Map<String, Value>) -> Option<String> {
    if let Some(unknown) = req.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
        return Some(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
        ));
    }
    let contents = match req.get("contents").and_then(Value::as_array) {
        Some(contents) if !contents.is_empty() => contents,
        _ => return Some("* GenerateContentRequest.contents: contents is not specified".into()),
    };
    for (i, content) in contents.iter().enumerate() {
        match content.get("role").and_then(Value::as_str) {
            None | Some("user" | "model") => {}
            Some(_) => return Some("Please use a valid role: user, model.".into()),
        }
        let Some(parts) = content
            .get("parts")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
        else {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        };
        if parts
            .iter()
            .any(|p| p.get("text").and_then(Value::as_str) == Some(""))
        {
            return Some(
                "Unable to submit request because it has an empty text parameter. Add a value to the parameter and \
                 try again."
                    .into(),
            );
        }
    }
    None
}

/// Text a part contributes to the prompt: its `text`, or a function response's `content` (else the whole
/// response as JSON).
fn part_text(part: &Value) -> Option<String> {
    if let Some(text) = part.get("text").and_then(Value::as_str) {
        return Some(text.to_owned());
    }
    let response = field(part.as_object()?, "functionResponse", "function_response")?.get("response")?;
    Some(match response.get("content").and_then(Value::as_str) {
        Some(content) => content.to_owned(),
        None => response.to_string(),
    })
}

fn content_texts(content: &Value) -> Vec<String> {
    content
        .get("parts")
        .and_then(Value::as_array)
        .map(|parts| parts.iter().filter_map(part_text).collect())
        .unwrap_or_default()
}

fn input_chars(req: &Map<String, Value>, contents: &[Value]) -> usize {
    let system = field(req, "systemInstruction", "system_instruction")
        .map(content_texts)
        .unwrap_or_default();
    let turns = contents.iter().flat_map(content_texts);
    system.into_iter().chain(turns).map(|t| t.chars().count()).sum()
}

fn answers_a_call(content: Option<&Value>) -> bool {
    content
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .is_some_and(|parts| {
            parts.iter().any(|p| {
                p.get("functionResponse")
                    .or_else(|| p.get("function_response"))
                    .is_some()
            })
        })
}

/// The function the mock calls: none without declarations, with mode `NONE`, or when the last turn answers a
/// call; the first allowed name under mode `ANY`; else the first declaration.
fn function_to_call(req: &Map<String, Value>, last: Option<&Value>) -> Option<String> {
    let names: Vec<&str> = req
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|tool| {
            field(tool.as_object()?, "functionDeclarations", "function_declarations")?.as_array()
        })
        .flatten()
        .filter_map(|declaration| declaration.get("name")?.as_str())
        .collect();
    if names.is_empty() || answers_a_call(last) {
        return None;
    }
    let config = field(req, "toolConfig", "tool_config")
        .and_then(Value::as_object)
        .and_then(|c| field(c, "functionCallingConfig", "function_calling_config"))
        .and_then(Value::as_object);
    let mode = config.and_then(|c| c.get("mode")).and_then(Value::as_str);
    let allowed = config
        .and_then(|c| field(c, "allowedFunctionNames", "allowed_function_names"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    match mode {
        Some("NONE") => None,
        Some("ANY") => Some(allowed.unwrap_or(names[0]).to_owned()),
        _ => Some(names[0].to_owned()),
    }
}

/// How the answer is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `generateContent`: one `GenerateContentResponse`.
    Whole,
    /// `streamGenerateContent?alt=sse`: one event per chunk.
    Sse,
    /// `streamGenerateContent` without `alt=sse`: the chunks as one JSON array.
    JsonArray,
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\r\n\r\n"))
}

fn generate(model: &str, req: &Map<String, Value>, mode: Mode, options: &ReplyOptions, seq: u64) -> Reply {
    if let Some(message) = invalid(req) {
        return error(400, &message);
    }
    let contents = req
        .get("contents")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let last = contents.last();
    let prompt = last.map(content_texts).unwrap_or_default().join("\n");
    let echo = reply::text(&prompt, None)
        .trim_start_matches("mock reply to: ")
        .to_owned();
    let config = field(req, "generationConfig", "generation_config").and_then(Value::as_object);
    let max = config
        .and_then(|c| field(c, "maxOutputTokens", "max_output_tokens"))
        .and_then(Value::as_u64);
    let include_thoughts = config
        .and_then(|c| field(c, "thinkingConfig", "thinking_config"))
        .and_then(|t| t.get("includeThoughts").or_else(|| t.get("include_thoughts")))
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let thought = include_thoughts.then(|| format!("thinking about: {echo}"));
    let thought_tokens = thought.as_deref().map_or(0, reply::tokens_for_reply);
    let (answer_parts, finish, candidate_tokens) = match function_to_call(req, last) {
        Some(name) => {
            let args = json!({ "input": echo });
            let tokens = reply::tokens_for_chars(name.chars().count() + args.to_string().chars().count());
            (
                vec![json!({ "functionCall": { "name": name, "args": args } })],
                "STOP",
                tokens,
            )
        }
        // JSON mode (structured output): the text is the JSON a function call would have been given.
        None if config
            .and_then(|c| field(c, "responseMimeType", "response_mime_type"))
            .and_then(Value::as_str)
            == Some("application/json") =>
        {
            let text = json!({ "input": echo }).to_string();
            let tokens = reply::tokens_for_reply(&text);
            let pieces = match mode {
                Mode::Whole => vec![text],
                Mode::Sse | Mode::JsonArray => reply::pieces(&text, options.stream_chunks),
            };
            let parts = pieces.into_iter().map(|p| json!({ "text": p })).collect();
            (parts, "STOP", tokens)
        }
        None => {
            let (text, truncated) = reply::limit(reply::text(&prompt, options.reply.as_deref()), max);
            let tokens = reply::tokens_for_reply(&text);
            let finish = if truncated { "MAX_TOKENS" } else { "STOP" };
            let pieces = match mode {
                Mode::Whole => vec![text],
                Mode::Sse | Mode::JsonArray => reply::pieces(&text, options.stream_chunks),
            };
            let parts = pieces.into_iter().map(|p| json!({ "text": p })).collect();
            (parts, finish, tokens)
        }
    };
    let prompt_tokens = reply::tokens_for_chars(input_chars(req, contents));
    let prompt_details = json!([{ "modality": "TEXT", "tokenCount": prompt_tokens }]);
    let mut usage = json!({
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidate_tokens,
        "totalTokenCount": prompt_tokens + candidate_tokens + thought_tokens,
        "promptTokensDetails": prompt_details
    });
    if thought_tokens > 0 {
        usage["thoughtsTokenCount"] = json!(thought_tokens);
    }
    let response_id = format!("mock-{seq}");
    let thought_part = thought.map(|t| json!({ "text": t, "thought": true }));

    if mode == Mode::Whole {
        let parts: Vec<Value> = thought_part.into_iter().chain(answer_parts).collect();
        return Reply::json(
            200,
            &json!({
                "candidates": [{
                    "content": { "parts": parts, "role": "model" },
                    "finishReason": finish,
                    "index": 0
                }],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": response_id
            }),
        );
    }

    let running_usage = json!({
        "promptTokenCount": prompt_tokens,
        "totalTokenCount": prompt_tokens,
        "promptTokensDetails": prompt_details
    });
    let chunk = |part: Value, finish: Option<&str>, usage: &Value| {
        let mut candidate = json!({ "content": { "parts": [part], "role": "model" }, "index": 0 });
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id
        })
    };
    let mut chunks: Vec<Value> = thought_part
        .into_iter()
        .map(|p| chunk(p, None, &running_usage))
        .collect();
    let prelude = chunks.len();
    let content = answer_parts.len();
    chunks.extend(answer_parts.into_iter().map(|p| chunk(p, None, &running_usage)));
    // The finish reason and the full usage come last, in a chunk of their own, so a cut stream never has them.
    chunks.push(chunk(json!({ "text": "" }), Some(finish), &usage));
    match mode {
        Mode::JsonArray => Reply::json(200, &Value::Array(chunks)),
        Mode::Whole | Mode::Sse => Reply::Events {
            frames: chunks.iter().map(sse).collect(),
            prelude,
            content,
        },
    }
}

/// `countTokens`: `contents` directly, or inside a `generateContentRequest`.
fn count_tokens(req: &Map<String, Value>) -> Reply {
    let inner = field(req, "generateContentRequest", "generate_content_request").and_then(Value::as_object);
    let source = inner.unwrap_or(req);
    let Some(contents) = source.get("contents").and_then(Value::as_array) else {
        return error(400, "* CountTokensRequest.contents: contents is not specified");
    };
    let tokens = reply::tokens_for_chars(input_chars(source, contents));
    Reply::json(
        200,
        &json!({
            "totalTokens": tokens,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": tokens }]
        }),
    )
}

fn models(options: &ReplyOptions) -> Reply {
    let models: Vec<Value> = options
        .models
        .iter()
        .map(|id| {
            json!({
                "name": format!("models/{id}"),
                "version": "001",
                "displayName": id,
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": ["generateContent", "countTokens"]
            })
        })
        .collect();
    Reply::json(200, &json!({ "models": models }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate_content(action: &str, query: Option<&str>, body: &Value) -> Reply {
        let path = format!("/v1beta/models/gemini-test:{action}");
        let body = body.to_string();
        route(
            &Method::POST,
            &path,
            query,
            body.as_bytes(),
            &ReplyOptions::default(),
            1,
        )
    }

    fn json_body(reply: Reply) -> Value {
        let Reply::Json { status, body, .. } = reply else {
            panic!("expected a JSON answer, got {reply:?}");
        };
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn json_mode_answers_the_prompt_as_json_text() {
        let mut body = json!({
            "contents": [{ "role": "user", "parts": [{ "text": "hello world" }] }],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": { "type": "object", "properties": { "input": { "type": "string" } } }
            }
        });
        let answer = json_body(generate_content("generateContent", None, &body));
        assert_eq!(
            answer["candidates"][0]["content"]["parts"],
            json!([{ "text": r#"{"input":"hello world"}"# }])
        );
        assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
        // One token per word, as for any reply.
        assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 2);

        // Streamed, the pieces join to the same JSON.
        let Reply::Events { frames, .. } = generate_content("streamGenerateContent", Some("alt=sse"), &body)
        else {
            panic!("expected an event stream");
        };
        let text: String = frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .filter_map(|f| serde_json::from_str::<Value>(f.strip_prefix("data: ")?.trim()).ok())
            .filter_map(|c| {
                c.pointer("/candidates/0/content/parts/0/text")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, r#"{"input":"hello world"}"#);

        // Without JSON mode, the usual reply.
        body["generationConfig"] = json!({ "responseMimeType": "text/plain" });
        let answer = json_body(generate_content("generateContent", None, &body));
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][0]["text"],
            "mock reply to: hello world"
        );
    }
}
