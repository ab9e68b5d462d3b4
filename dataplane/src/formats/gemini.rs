//! Google Gemini wire format (Generative Language API `generateContent` and
//! `streamGenerateContent?alt=sse`), translated to and from the canonical model in [`ir`].
//!
//! Gemini is only ever a provider: this module encodes requests and decodes answers, errors
//! and streams. The model travels in the URL (`/models/{model}:generateContent`), so the
//! request body never names it. URLs, headers and transport are not owned here.
//!
//! Choices that are not one-to-one:
//! * Tool results: Gemini's `functionResponse` names the function, the canonical model only
//!   has the call id, so the name is found on the matching tool call earlier in the
//!   conversation (the id itself if there is none). Its `response` must be an object: result
//!   text that is a JSON object is sent as is, other text as `{"content": TEXT}`; an error
//!   result becomes `{"error": TEXT_OR_OBJECT}` (Gemini's documented key for failures).
//!   Images in a tool result follow their `functionResponse` as parts of the same turn.
//! * Tool schemas and `responseSchema` are Gemini's OpenAPI subset, which rejects keywords
//!   such as `additionalProperties` or `$schema`: those are stripped recursively (property
//!   names are left alone). This changes no meaning Gemini could enforce, so nothing is
//!   reported. A function without parameters (an object schema with no properties) is
//!   declared without `parameters`, which Gemini requires.
//! * Thinking from earlier turns is not sent back (Gemini's thought parts need Gemini's own
//!   `thoughtSignature`); it is reported as `thinking`. Gemini 3 refuses replayed function
//!   calls without a signature, so the first `functionCall` of every model turn carries the
//!   documented `skip_thought_signature_validator` placeholder.
//! * Consecutive messages of the same role are merged into one `contents` entry; empty text
//!   parts (which Gemini rejects) are skipped.
//! * Answers: a `functionCall` without an `id` gets `call_{responseId}_{n}` (`n` counting
//!   calls in the answer), so ids are unique across turns and stable for a given answer.
//!   `promptTokenCount` (plus `toolUsePromptTokenCount`) is the input, which already counts
//!   cached tokens; `candidatesTokenCount + thoughtsTokenCount` is the output. Parts other
//!   than text, thoughts and function calls (generated images, code execution) are ignored.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ir::{self, BlockKind, Delta, ErrorKind, Part, Role, StopReason, StreamEvent, Usage};
use super::sse::SseEvent;

/// Google's documented placeholder for a replayed function call whose thought signature
/// was not kept (Gemini 3 rejects a function call turn without one).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// Schema keywords Gemini's schema dialect rejects; stripped wherever they appear.
const UNSUPPORTED_SCHEMA_KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "additionalProperties",
    "unevaluatedProperties",
];

/// Schema keywords whose value maps names to schemas (the names are not keywords).
const SCHEMA_MAPS: &[&str] = &[
    "properties",
    "$defs",
    "definitions",
    "patternProperties",
    "dependentSchemas",
];

/// Schema keywords whose value is data, not a schema.
const SCHEMA_DATA: &[&str] = &["enum", "const", "default", "example", "examples", "required"];

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// IR → Gemini request body (the model goes in the URL, not the body). Records in `dropped`
/// what Gemini cannot express: `cache_control`, `parallel_tool_calls` (when `false`), `user`,
/// `reasoning_effort`, `thinking` (thinking parts of earlier turns), `tool_call_arguments`
/// (arguments that are not a JSON object), and every key of `extra` by name.
pub fn encode_request(req: &ir::ChatRequest, dropped: &mut ir::Dropped) -> Bytes {
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(encode_contents(&req.messages, dropped)),
    );

    let system: Vec<Value> = req
        .system
        .iter()
        .filter(|block| {
            if block.cache_control.is_some() {
                dropped.add("cache_control");
            }
            !block.text.is_empty()
        })
        .map(|block| json!({ "text": block.text }))
        .collect();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }

    if !req.tools.is_empty() {
        let declarations: Vec<Value> = req
            .tools
            .iter()
            .map(|tool| {
                if tool.cache_control.is_some() {
                    dropped.add("cache_control");
                }
                let mut declaration = Map::new();
                declaration.insert("name".into(), Value::from(tool.name.as_str()));
                if let Some(description) = &tool.description {
                    declaration.insert("description".into(), Value::from(description.as_str()));
                }
                let parameters = sanitize_schema(&tool.parameters);
                if !is_empty_object_schema(&parameters) {
                    declaration.insert("parameters".into(), parameters);
                }
                Value::Object(declaration)
            })
            .collect();
        body.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        if let Some(choice) = &req.tool_choice {
            let config = match choice {
                ir::ToolChoice::Auto => json!({ "mode": "AUTO" }),
                ir::ToolChoice::None => json!({ "mode": "NONE" }),
                ir::ToolChoice::Required => json!({ "mode": "ANY" }),
                ir::ToolChoice::Tool(name) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
            };
            body.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
        }
    }
    if req.parallel_tool_calls == Some(false) {
        dropped.add("parallel_tool_calls");
    }

    let generation = generation_config(req);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }

    if req.reasoning_effort.is_some() {
        dropped.add("reasoning_effort");
    }
    if req.user.is_some() {
        dropped.add("user");
    }
    for (key, _) in &req.extra {
        dropped.add(key.as_str());
    }
    Bytes::from(Value::Object(body).to_string())
}

fn generation_config(req: &ir::ChatRequest) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(max) = req.max_tokens {
        config.insert("maxOutputTokens".into(), Value::from(max));
    }
    if let Some(temperature) = req.temperature {
        config.insert("temperature".into(), Value::from(temperature));
    }
    if let Some(top_p) = req.top_p {
        config.insert("topP".into(), Value::from(top_p));
    }
    if let Some(top_k) = req.top_k {
        config.insert("topK".into(), Value::from(top_k));
    }
    if !req.stop.is_empty() {
        config.insert("stopSequences".into(), Value::from(req.stop.clone()));
    }
    match &req.response_format {
        Some(ir::ResponseFormat::JsonObject) => {
            config.insert("responseMimeType".into(), Value::from("application/json"));
        }
        Some(ir::ResponseFormat::JsonSchema { schema, .. }) => {
            config.insert("responseMimeType".into(), Value::from("application/json"));
            config.insert("responseSchema".into(), sanitize_schema(schema));
        }
        Some(ir::ResponseFormat::Text) | None => {}
    }
    if let Some(thinking) = &req.thinking {
        let mut thinking_config = Map::new();
        if let Some(budget) = thinking.budget_tokens {
            thinking_config.insert("thinkingBudget".into(), Value::from(budget));
        }
        thinking_config.insert("includeThoughts".into(), Value::Bool(true));
        config.insert("thinkingConfig".into(), Value::Object(thinking_config));
    }
    config
}

/// The conversation as Gemini `contents`: same-role neighbours merged, empty turns skipped.
fn encode_contents(messages: &[ir::Message], dropped: &mut ir::Dropped) -> Vec<Value> {
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for (at, message) in messages.iter().enumerate() {
        let mut parts = Vec::new();
        for part in &message.parts {
            match part {
                Part::Text { text, cache_control } => {
                    if cache_control.is_some() {
                        dropped.add("cache_control");
                    }
                    if !text.is_empty() {
                        parts.push(json!({ "text": text }));
                    }
                }
                Part::Image {
                    source,
                    cache_control,
                } => {
                    if cache_control.is_some() {
                        dropped.add("cache_control");
                    }
                    parts.push(image_part(source));
                }
                Part::ToolCall { name, arguments, .. } => {
                    let args = arguments_object(arguments, dropped);
                    parts.push(json!({ "functionCall": { "name": name, "args": args } }));
                }
                Part::ToolResult {
                    call_id,
                    content,
                    is_error,
                    cache_control,
                } => {
                    if cache_control.is_some() {
                        dropped.add("cache_control");
                    }
                    let name = tool_name(&messages[..at], call_id);
                    let (response, images) = function_response(content, *is_error);
                    parts.push(json!({ "functionResponse": { "name": name, "response": response } }));
                    parts.extend(images);
                }
                Part::Thinking { .. } | Part::RedactedThinking { .. } => dropped.add("thinking"),
            }
        }
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((role, existing)) if *role == message.role => existing.extend(parts),
            _ => turns.push((message.role, parts)),
        }
    }
    turns
        .into_iter()
        .map(|(role, mut parts)| {
            let role = match role {
                Role::User => "user",
                Role::Assistant => {
                    if let Some(Value::Object(call)) =
                        parts.iter_mut().find(|p| p.get("functionCall").is_some())
                    {
                        call.insert("thoughtSignature".into(), Value::from(SKIP_SIGNATURE));
                    }
                    "model"
                }
            };
            json!({ "role": role, "parts": parts })
        })
        .collect()
}

fn image_part(source: &ir::ImageSource) -> Value {
    match source {
        ir::ImageSource::Base64 { media_type, data } => {
            json!({ "inlineData": { "mimeType": media_type, "data": data } })
        }
        ir::ImageSource::Url(url) => {
            json!({ "fileData": { "mimeType": mime_from_url(url), "fileUri": url } })
        }
    }
}

/// The image type a URL's extension names (query and fragment ignored), else `image/jpeg`.
fn mime_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => "image/jpeg",
    }
}

/// Tool call arguments as the object Gemini's `args` must be. Empty or `null` is `{}`;
/// anything else that is not an object is reported and sent as `{}`.
fn arguments_object(arguments: &str, dropped: &mut ir::Dropped) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(args @ Value::Object(_)) => args,
        Ok(Value::Null) => json!({}),
        _ => {
            dropped.add("tool_call_arguments");
            json!({})
        }
    }
}

/// The function name of the latest tool call with this id before `history` ends; the id
/// itself if there is none.
fn tool_name<'a>(history: &'a [ir::Message], call_id: &'a str) -> &'a str {
    history
        .iter()
        .rev()
        .flat_map(|m| m.parts.iter().rev())
        .find_map(|part| match part {
            Part::ToolCall { id, name, .. } if id == call_id => Some(name.as_str()),
            _ => None,
        })
        .unwrap_or(call_id)
}

/// A tool result as a `functionResponse.response` object, and its images as parts.
fn function_response(content: &[Part], is_error: bool) -> (Value, Vec<Value>) {
    let mut texts = Vec::new();
    let mut images = Vec::new();
    for part in content {
        match part {
            Part::Text { text, .. } => texts.push(text.as_str()),
            Part::Image { source, .. } => images.push(image_part(source)),
            _ => {}
        }
    }
    let text = texts.join("\n");
    let parsed = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => Some(object),
        _ => None,
    };
    let response = match (parsed, is_error) {
        (Some(object), false) => object,
        (Some(object), true) => json!({ "error": object }),
        (None, false) => json!({ "content": text }),
        (None, true) => json!({ "error": text }),
    };
    (response, images)
}

/// A JSON Schema in Gemini's dialect: [`UNSUPPORTED_SCHEMA_KEYWORDS`] removed at every
/// level. Names under `properties` (and other name → schema maps) and data such as `enum`
/// values are never touched.
fn sanitize_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(keywords) => {
            let mut out = Map::new();
            for (keyword, value) in keywords {
                if UNSUPPORTED_SCHEMA_KEYWORDS.contains(&keyword.as_str()) {
                    continue;
                }
                let value = if SCHEMA_DATA.contains(&keyword.as_str()) {
                    value.clone()
                } else if SCHEMA_MAPS.contains(&keyword.as_str()) {
                    match value {
                        Value::Object(named) => Value::Object(
                            named
                                .iter()
                                .map(|(name, s)| (name.clone(), sanitize_schema(s)))
                                .collect(),
                        ),
                        other => other.clone(),
                    }
                } else {
                    sanitize_schema(value)
                };
                out.insert(keyword.clone(), value);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sanitize_schema).collect()),
        other => other.clone(),
    }
}

/// `null`, `{}`, or an object schema without properties: Gemini wants no `parameters` then.
fn is_empty_object_schema(schema: &Value) -> bool {
    match schema {
        Value::Null => true,
        Value::Object(keywords) => {
            let no_properties = keywords
                .get("properties")
                .is_none_or(|p| p.as_object().is_some_and(Map::is_empty));
            let object_typed = keywords.get("type").is_none_or(|t| t == "object");
            no_properties
                && object_typed
                && keywords.keys().all(|k| {
                    matches!(
                        k.as_str(),
                        "type" | "properties" | "required" | "description" | "title"
                    )
                })
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GenerateContentResponse {
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
    model_version: Option<String>,
    response_id: Option<String>,
    /// An error reported inside a stream.
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Content {
    parts: Vec<ResponsePart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ResponsePart {
    text: Option<String>,
    thought: bool,
    thought_signature: Option<String>,
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
    cached_content_token_count: u64,
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    fn to_ir(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_token_count + self.tool_use_prompt_token_count,
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
            cached_input_tokens: self.cached_content_token_count,
            cache_creation_tokens: 0,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

/// Gemini's finish reason in canonical terms. `STOP` after a function call is a tool use.
fn stop_reason(reason: &str, called_tools: bool) -> StopReason {
    match reason {
        "STOP" if called_tools => StopReason::ToolUse,
        "STOP" => StopReason::EndTurn,
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::ContentFilter
        }
        other => StopReason::Other(other.to_owned()),
    }
}

/// Names tool calls that came without an id: `call_{base}_{n}`.
#[derive(Debug, Default)]
struct CallIds {
    base: String,
    next: usize,
}

impl CallIds {
    /// `base` from the response id (only `[A-Za-z0-9_-]` kept, so any format accepts it), or
    /// random when there is none.
    fn new(response_id: Option<&str>) -> Self {
        let base: String = response_id
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect();
        let base = if base.is_empty() {
            format!("{:016x}", rand::random::<u64>())
        } else {
            base
        };
        CallIds { base, next: 0 }
    }

    fn id_for(&mut self, call: &FunctionCall) -> String {
        let n = self.next;
        self.next += 1;
        match &call.id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => format!("call_{}_{n}", self.base),
        }
    }
}

fn arguments_text(call: &FunctionCall) -> String {
    match &call.args {
        Some(args @ Value::Object(_)) => args.to_string(),
        _ => "{}".to_owned(),
    }
}

/// A `generateContent` answer in canonical terms (the first candidate).
pub fn decode_response(body: &[u8]) -> Result<ir::ChatResponse, ir::DecodeError> {
    let response: GenerateContentResponse =
        serde_json::from_slice(body).map_err(|e| ir::DecodeError(format!("invalid Gemini response: {e}")))?;
    let blocked = response
        .prompt_feedback
        .as_ref()
        .is_some_and(|f| f.block_reason.is_some());
    let Some(candidate) = response.candidates.first() else {
        if blocked {
            return Ok(ir::ChatResponse {
                id: response.response_id.unwrap_or_default(),
                model: response.model_version.unwrap_or_default(),
                parts: Vec::new(),
                stop: StopReason::ContentFilter,
                usage: response
                    .usage_metadata
                    .as_ref()
                    .map(UsageMetadata::to_ir)
                    .unwrap_or_default(),
                created: None,
            });
        }
        return Err(ir::DecodeError("Gemini response has no candidates".into()));
    };

    let mut ids = CallIds::new(response.response_id.as_deref());
    let mut parts: Vec<Part> = Vec::new();
    let mut called_tools = false;
    for part in candidate.content.iter().flat_map(|c| &c.parts) {
        if let Some(call) = &part.function_call {
            called_tools = true;
            parts.push(Part::ToolCall {
                id: ids.id_for(call),
                name: call.name.clone(),
                arguments: arguments_text(call),
            });
            continue;
        }
        let Some(text) = &part.text else { continue };
        if part.thought {
            if let Some(Part::Thinking {
                text: previous,
                signature,
            }) = parts.last_mut()
            {
                previous.push_str(text);
                if part.thought_signature.is_some() {
                    signature.clone_from(&part.thought_signature);
                }
            } else {
                parts.push(Part::Thinking {
                    text: text.clone(),
                    signature: part.thought_signature.clone(),
                });
            }
        } else if let Some(Part::Text { text: previous, .. }) = parts.last_mut() {
            previous.push_str(text);
        } else if !text.is_empty() {
            parts.push(Part::Text {
                text: text.clone(),
                cache_control: None,
            });
        }
    }
    let stop = match candidate.finish_reason.as_deref() {
        Some(reason) => stop_reason(reason, called_tools),
        None if called_tools => StopReason::ToolUse,
        None => StopReason::EndTurn,
    };
    Ok(ir::ChatResponse {
        id: response.response_id.unwrap_or_default(),
        model: response.model_version.unwrap_or_default(),
        parts,
        stop,
        usage: response
            .usage_metadata
            .as_ref()
            .map(UsageMetadata::to_ir)
            .unwrap_or_default(),
        created: None,
    })
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// A Gemini error answer (`{"error":{"code","message","status","details"}}`, possibly
/// wrapped in an array, possibly not JSON at all) in canonical terms. The kind comes from
/// the gRPC `status` name when there is one, else from the HTTP status; an invalid API key
/// (Gemini answers 400 `API_KEY_INVALID`) is an authentication error, an HTTP 413 a request
/// too large whatever the body says. `status` in the result
/// is the HTTP status that kind stands for.
pub fn decode_error(status: u16, body: &[u8]) -> ir::ErrorInfo {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| match v {
        Value::Array(items) => items.first()?.get("error"),
        other => other.get("error"),
    });
    match error {
        Some(error) => error_info(status, error),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() || text.starts_with('<') {
                format!("Gemini returned HTTP {status}")
            } else {
                text.chars().take(500).collect()
            };
            let kind = kind_for_http(status);
            ir::ErrorInfo {
                status: status_for(kind, status),
                kind,
                message,
            }
        }
    }
}

/// The canonical error for a Gemini `error` object answered with HTTP `status`.
fn error_info(status: u16, error: &Value) -> ir::ErrorInfo {
    let grpc = error.get("status").and_then(Value::as_str).unwrap_or("");
    let invalid_key = error
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
    let kind = if status == 413 {
        ErrorKind::RequestTooLarge
    } else if invalid_key {
        ErrorKind::Authentication
    } else {
        match grpc {
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorKind::InvalidRequest,
            "UNAUTHENTICATED" => ErrorKind::Authentication,
            "PERMISSION_DENIED" => ErrorKind::Permission,
            "NOT_FOUND" => ErrorKind::NotFound,
            "RESOURCE_EXHAUSTED" => ErrorKind::RateLimit,
            "UNAVAILABLE" => ErrorKind::Overloaded,
            "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
            "INTERNAL" | "UNKNOWN" | "DATA_LOSS" | "ABORTED" | "CANCELLED" | "UNIMPLEMENTED" => {
                ErrorKind::Server
            }
            _ => kind_for_http(status),
        }
    };
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(|| format!("Gemini returned HTTP {status}"), str::to_owned);
    ir::ErrorInfo {
        status: status_for(kind, status),
        kind,
        message,
    }
}

fn kind_for_http(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Authentication,
        403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimit,
        503 => ErrorKind::Overloaded,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Server,
    }
}

/// The HTTP status a kind stands for; server errors keep the provider's 5xx.
fn status_for(kind: ErrorKind, upstream: u16) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::Timeout => 504,
        ErrorKind::Server if (500..=599).contains(&upstream) => upstream,
        ErrorKind::Server => 500,
    }
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
}

/// Turns the events of `streamGenerateContent?alt=sse` (each `data:` a whole
/// `GenerateContentResponse`) into canonical stream events.
///
/// Text and thought parts open a text or thinking block that stays open while the same kind
/// keeps coming; a function call arrives whole and becomes one tool call block (start, all
/// its arguments, stop). The stream has no terminal event of its own: the last chunk
/// carries `finishReason` and usage, and [`StreamDecoder::finish`] emits the end once the
/// upstream body is over.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    open: Option<(usize, OpenBlock)>,
    next_index: usize,
    ids: CallIds,
    called_tools: bool,
    finish_reason: Option<String>,
    blocked: bool,
    usage: Option<Usage>,
    /// `finish` ran, or an error ended the stream: nothing more is emitted.
    ended: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event. Empty events are skipped; an `{"error":...}` event becomes a
    /// [`StreamEvent::Error`], after which nothing more is emitted.
    pub fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ir::DecodeError> {
        let data = event.data.trim();
        if self.ended || data.is_empty() || data == "[DONE]" {
            return Ok(Vec::new());
        }
        let chunk: GenerateContentResponse = serde_json::from_str(data)
            .map_err(|e| ir::DecodeError(format!("invalid Gemini stream chunk: {e}")))?;
        let mut out = Vec::new();
        if let Some(error) = &chunk.error {
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            self.ended = true;
            out.push(StreamEvent::Error(error_info(status, error)));
            return Ok(out);
        }
        if !self.started {
            self.started = true;
            self.ids = CallIds::new(chunk.response_id.as_deref());
            out.push(StreamEvent::Start {
                id: chunk.response_id.clone().unwrap_or_default(),
                model: chunk.model_version.clone().unwrap_or_default(),
            });
        }
        if let Some(usage) = &chunk.usage_metadata {
            self.usage = Some(usage.to_ir());
        }
        if chunk
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some())
        {
            self.blocked = true;
        }
        if let Some(candidate) = chunk.candidates.first() {
            for part in candidate.content.iter().flat_map(|c| &c.parts) {
                self.part(part, &mut out);
            }
            if let Some(reason) = &candidate.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
        Ok(out)
    }

    fn part(&mut self, part: &ResponsePart, out: &mut Vec<StreamEvent>) {
        if let Some(call) = &part.function_call {
            self.close(out);
            self.called_tools = true;
            let index = self.take_index();
            out.push(StreamEvent::BlockStart {
                index,
                kind: BlockKind::ToolCall {
                    id: self.ids.id_for(call),
                    name: call.name.clone(),
                },
            });
            out.push(StreamEvent::Delta {
                index,
                delta: Delta::ToolArguments(arguments_text(call)),
            });
            out.push(StreamEvent::BlockStop { index });
            return;
        }
        let Some(text) = &part.text else { return };
        if part.thought {
            let signature = part.thought_signature.as_ref().filter(|s| !s.is_empty());
            if text.is_empty() && signature.is_none() {
                return;
            }
            let index = self.ensure_open(OpenBlock::Thinking, out);
            if !text.is_empty() {
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Thinking(text.clone()),
                });
            }
            if let Some(signature) = signature {
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Signature(signature.clone()),
                });
            }
        } else if !text.is_empty() {
            let index = self.ensure_open(OpenBlock::Text, out);
            out.push(StreamEvent::Delta {
                index,
                delta: Delta::Text(text.clone()),
            });
        }
    }

    fn take_index(&mut self) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        index
    }

    /// The index of the open block of this kind, opening it (and closing another) if needed.
    fn ensure_open(&mut self, kind: OpenBlock, out: &mut Vec<StreamEvent>) -> usize {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.take_index();
        self.open = Some((index, kind));
        out.push(StreamEvent::BlockStart {
            index,
            kind: match kind {
                OpenBlock::Text => BlockKind::Text,
                OpenBlock::Thinking => BlockKind::Thinking,
            },
        });
        index
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Events to emit when the upstream stream ends: if a finishReason was seen →
    /// (BlockStop for the open block), Finish, Usage, Done; else nothing (the relay reports
    /// an incomplete stream). Nothing on a second call, or after an error event.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        if self.ended || !self.saw_finish() {
            return Vec::new();
        }
        self.ended = true;
        let mut out = Vec::new();
        self.close(&mut out);
        let stop = match &self.finish_reason {
            Some(reason) => stop_reason(reason, self.called_tools),
            None => StopReason::ContentFilter,
        };
        out.push(StreamEvent::Finish { stop });
        if let Some(usage) = self.usage {
            out.push(StreamEvent::Usage(usage));
        }
        out.push(StreamEvent::Done);
        out
    }

    /// Whether the stream said how it ended (a `finishReason`, or a blocked prompt).
    pub fn saw_finish(&self) -> bool {
        self.finish_reason.is_some() || self.blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ir::{
        ChatRequest, ChatResponse, ImageSource, Message, ResponseFormat, SystemBlock, Thinking, Tool,
        ToolChoice,
    };
    use crate::formats::sse::{SseFramer, parse_events};

    fn encode(req: &ChatRequest) -> (Value, Vec<String>) {
        let mut dropped = ir::Dropped::default();
        let body = encode_request(req, &mut dropped);
        (serde_json::from_slice(&body).unwrap(), dropped.names().to_vec())
    }

    fn text(t: &str) -> Part {
        Part::Text {
            text: t.into(),
            cache_control: None,
        }
    }

    fn user(parts: Vec<Part>) -> Message {
        Message {
            role: Role::User,
            parts,
        }
    }

    fn assistant(parts: Vec<Part>) -> Message {
        Message {
            role: Role::Assistant,
            parts,
        }
    }

    fn hello() -> ChatRequest {
        ChatRequest {
            model: "alias".into(),
            messages: vec![user(vec![text("hello")])],
            ..ChatRequest::default()
        }
    }

    fn weather_tool(parameters: Value) -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters,
            cache_control: None,
        }
    }

    #[test]
    fn encodes_every_mapping() {
        let city_schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "city": { "type": "string", "enum": ["Paris", "additionalProperties"] },
                "additionalProperties": { "type": "object", "additionalProperties": { "type": "string" } },
                "days": { "type": "array", "items": { "type": "integer", "$comment": "x" } },
                "unit": { "anyOf": [{ "type": "string", "additionalProperties": false }, { "type": "null" }] }
            },
            "required": ["city"]
        });
        let clean_city_schema = json!({
            "type": "object",
            "properties": {
                "city": { "type": "string", "enum": ["Paris", "additionalProperties"] },
                "additionalProperties": { "type": "object" },
                "days": { "type": "array", "items": { "type": "integer" } },
                "unit": { "anyOf": [{ "type": "string" }, { "type": "null" }] }
            },
            "required": ["city"]
        });

        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Box<dyn Fn(&mut ChatRequest)>, Value, Vec<&str>)> = vec![
            (
                "plain user text",
                Box::new(|_| {}),
                json!({ "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }] }),
                vec![],
            ),
            (
                "system blocks; cache_control reported",
                Box::new(|r| {
                    r.system = vec![
                        SystemBlock {
                            text: "be brief".into(),
                            cache_control: None,
                        },
                        SystemBlock {
                            text: "be kind".into(),
                            cache_control: Some(json!({ "type": "ephemeral" })),
                        },
                    ]
                }),
                json!({
                    "systemInstruction": { "parts": [{ "text": "be brief" }, { "text": "be kind" }] },
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }]
                }),
                vec!["cache_control"],
            ),
            (
                "multi-turn: roles, same-role merge, empty text skipped",
                Box::new(|r| {
                    r.messages = vec![
                        user(vec![text("hi")]),
                        user(vec![text("there")]),
                        assistant(vec![text(""), text("hello!")]),
                        user(vec![text("bye")]),
                    ]
                }),
                json!({ "contents": [
                    { "role": "user", "parts": [{ "text": "hi" }, { "text": "there" }] },
                    { "role": "model", "parts": [{ "text": "hello!" }] },
                    { "role": "user", "parts": [{ "text": "bye" }] }
                ] }),
                vec![],
            ),
            (
                "images: base64 inline, URL as fileData with a guessed type",
                Box::new(|r| {
                    r.messages = vec![user(vec![
                        text("what is this?"),
                        Part::Image {
                            source: ImageSource::Base64 {
                                media_type: "image/png".into(),
                                data: "iVBORw0KGgo=".into(),
                            },
                            cache_control: None,
                        },
                        Part::Image {
                            source: ImageSource::Url("https://x.test/a/cat.WEBP?s=1".into()),
                            cache_control: None,
                        },
                        Part::Image {
                            source: ImageSource::Url("https://x.test/img".into()),
                            cache_control: None,
                        },
                    ])]
                }),
                json!({ "contents": [{ "role": "user", "parts": [
                    { "text": "what is this?" },
                    { "inlineData": { "mimeType": "image/png", "data": "iVBORw0KGgo=" } },
                    { "fileData": { "mimeType": "image/webp", "fileUri": "https://x.test/a/cat.WEBP?s=1" } },
                    { "fileData": { "mimeType": "image/jpeg", "fileUri": "https://x.test/img" } }
                ] }] }),
                vec![],
            ),
            (
                "parallel tool calls and their results, names found by call id",
                Box::new(|r| {
                    r.messages = vec![
                        user(vec![text("weather in Paris and Rome?")]),
                        assistant(vec![
                            text("Checking."),
                            Part::ToolCall {
                                id: "c1".into(),
                                name: "get_weather".into(),
                                arguments: r#"{"city":"Paris"}"#.into(),
                            },
                            Part::ToolCall {
                                id: "c2".into(),
                                name: "get_time".into(),
                                arguments: String::new(),
                            },
                        ]),
                        user(vec![
                            Part::ToolResult {
                                call_id: "c1".into(),
                                content: vec![text("sunny")],
                                is_error: false,
                                cache_control: None,
                            },
                            Part::ToolResult {
                                call_id: "c2".into(),
                                content: vec![text(r#"{"time":"12:00"}"#)],
                                is_error: false,
                                cache_control: None,
                            },
                            Part::ToolResult {
                                call_id: "unknown".into(),
                                content: vec![text("boom")],
                                is_error: true,
                                cache_control: None,
                            },
                        ]),
                    ]
                }),
                json!({ "contents": [
                    { "role": "user", "parts": [{ "text": "weather in Paris and Rome?" }] },
                    { "role": "model", "parts": [
                        { "text": "Checking." },
                        { "functionCall": { "name": "get_weather", "args": { "city": "Paris" } }, "thoughtSignature": SKIP_SIGNATURE },
                        { "functionCall": { "name": "get_time", "args": {} } }
                    ] },
                    { "role": "user", "parts": [
                        { "functionResponse": { "name": "get_weather", "response": { "content": "sunny" } } },
                        { "functionResponse": { "name": "get_time", "response": { "time": "12:00" } } },
                        { "functionResponse": { "name": "unknown", "response": { "error": "boom" } } }
                    ] }
                ] }),
                vec![],
            ),
            (
                "a tool result with an image, an error object; bad arguments reported",
                Box::new(|r| {
                    r.messages = vec![
                        assistant(vec![Part::ToolCall {
                            id: "c1".into(),
                            name: "screenshot".into(),
                            arguments: "[1]".into(),
                        }]),
                        user(vec![
                            Part::ToolResult {
                                call_id: "c1".into(),
                                content: vec![
                                    text("here"),
                                    Part::Image {
                                        source: ImageSource::Url("https://x.test/s.png".into()),
                                        cache_control: None,
                                    },
                                ],
                                is_error: false,
                                cache_control: Some(json!({ "type": "ephemeral" })),
                            },
                            Part::ToolResult {
                                call_id: "c1".into(),
                                content: vec![text(r#"{"code":7}"#)],
                                is_error: true,
                                cache_control: None,
                            },
                        ]),
                    ]
                }),
                json!({ "contents": [
                    { "role": "model", "parts": [
                        { "functionCall": { "name": "screenshot", "args": {} }, "thoughtSignature": SKIP_SIGNATURE }
                    ] },
                    { "role": "user", "parts": [
                        { "functionResponse": { "name": "screenshot", "response": { "content": "here" } } },
                        { "fileData": { "mimeType": "image/png", "fileUri": "https://x.test/s.png" } },
                        { "functionResponse": { "name": "screenshot", "response": { "error": { "code": 7 } } } }
                    ] }
                ] }),
                vec!["tool_call_arguments", "cache_control"],
            ),
            (
                "tools with sanitized schemas, a parameterless tool, forced tool choice",
                Box::new(move |r| {
                    r.tools = vec![
                        weather_tool(city_schema.clone()),
                        Tool {
                            name: "now".into(),
                            description: None,
                            parameters: json!({ "type": "object", "properties": {}, "additionalProperties": false }),
                            cache_control: Some(json!({ "type": "ephemeral" })),
                        },
                    ];
                    r.tool_choice = Some(ToolChoice::Tool("get_weather".into()));
                }),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "tools": [{ "functionDeclarations": [
                        { "name": "get_weather", "description": "Weather for a city", "parameters": clean_city_schema },
                        { "name": "now" }
                    ] }],
                    "toolConfig": { "functionCallingConfig": { "mode": "ANY", "allowedFunctionNames": ["get_weather"] } }
                }),
                vec!["cache_control"],
            ),
            (
                "tool choice auto / none / required",
                Box::new(|r| {
                    r.tools = vec![weather_tool(
                        json!({ "type": "object", "properties": { "city": { "type": "string" } } }),
                    )];
                    r.tool_choice = Some(ToolChoice::Required);
                    r.parallel_tool_calls = Some(false);
                }),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "tools": [{ "functionDeclarations": [{
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parameters": { "type": "object", "properties": { "city": { "type": "string" } } }
                    }] }],
                    "toolConfig": { "functionCallingConfig": { "mode": "ANY" } }
                }),
                vec!["parallel_tool_calls"],
            ),
            (
                "sampling, stops, JSON object output",
                Box::new(|r| {
                    r.max_tokens = Some(256);
                    r.temperature = Some(0.5);
                    r.top_p = Some(0.9);
                    r.top_k = Some(40);
                    r.stop = vec!["END".into(), "STOP".into()];
                    r.response_format = Some(ResponseFormat::JsonObject);
                    r.stream = true;
                    r.include_usage = true;
                }),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "generationConfig": {
                        "maxOutputTokens": 256, "temperature": 0.5, "topP": 0.9, "topK": 40,
                        "stopSequences": ["END", "STOP"], "responseMimeType": "application/json"
                    }
                }),
                vec![],
            ),
            (
                "JSON schema output, thinking with a budget",
                Box::new(|r| {
                    r.response_format = Some(ResponseFormat::JsonSchema {
                        name: "answer".into(),
                        schema: json!({ "type": "object", "properties": { "a": { "type": "number" } }, "additionalProperties": false }),
                        strict: Some(true),
                    });
                    r.thinking = Some(Thinking {
                        budget_tokens: Some(1024),
                    });
                }),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "generationConfig": {
                        "responseMimeType": "application/json",
                        "responseSchema": { "type": "object", "properties": { "a": { "type": "number" } } },
                        "thinkingConfig": { "thinkingBudget": 1024, "includeThoughts": true }
                    }
                }),
                vec![],
            ),
            (
                "thinking without a budget; text format is the default",
                Box::new(|r| {
                    r.thinking = Some(Thinking { budget_tokens: None });
                    r.response_format = Some(ResponseFormat::Text);
                }),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "generationConfig": { "thinkingConfig": { "includeThoughts": true } }
                }),
                vec![],
            ),
            (
                "what Gemini cannot say is reported",
                Box::new(|r| {
                    r.user = Some("u-1".into());
                    r.reasoning_effort = Some("high".into());
                    r.extra = vec![("logprobs".into(), json!(true)), ("seed".into(), json!(1))];
                    r.messages = vec![
                        user(vec![Part::Text {
                            text: "q".into(),
                            cache_control: Some(json!({ "type": "ephemeral" })),
                        }]),
                        assistant(vec![
                            Part::Thinking {
                                text: "hmm".into(),
                                signature: Some("sig".into()),
                            },
                            Part::RedactedThinking {
                                data: "opaque".into(),
                            },
                            text("a"),
                        ]),
                        assistant(vec![Part::Thinking {
                            text: "only thoughts".into(),
                            signature: None,
                        }]),
                        user(vec![text("q2")]),
                    ];
                }),
                json!({ "contents": [
                    { "role": "user", "parts": [{ "text": "q" }] },
                    { "role": "model", "parts": [{ "text": "a" }] },
                    { "role": "user", "parts": [{ "text": "q2" }] }
                ] }),
                vec![
                    "cache_control",
                    "thinking",
                    "reasoning_effort",
                    "user",
                    "logprobs",
                    "seed",
                ],
            ),
        ];

        for (name, edit, want, want_dropped) in cases {
            let mut req = hello();
            edit(&mut req);
            let (got, dropped) = encode(&req);
            assert_eq!(got, want, "{name}");
            assert_eq!(dropped, want_dropped, "{name}");
            assert!(got.get("model").is_none(), "{name}: the model goes in the URL");
        }
    }

    #[test]
    fn tool_result_names_the_latest_call_with_that_id() {
        let call = |name: &str| Part::ToolCall {
            id: "dup".into(),
            name: name.into(),
            arguments: "{}".into(),
        };
        let result = Part::ToolResult {
            call_id: "dup".into(),
            content: vec![text("ok")],
            is_error: false,
            cache_control: None,
        };
        let req = ChatRequest {
            messages: vec![
                assistant(vec![call("first")]),
                user(vec![result.clone()]),
                assistant(vec![call("second")]),
                user(vec![result]),
            ],
            ..ChatRequest::default()
        };
        let (body, _) = encode(&req);
        assert_eq!(
            body.pointer("/contents/1/parts/0/functionResponse/name"),
            Some(&json!("first"))
        );
        assert_eq!(
            body.pointer("/contents/3/parts/0/functionResponse/name"),
            Some(&json!("second"))
        );
    }

    #[test]
    fn decodes_text_with_usage() {
        let body = br#"{
          "candidates": [{
            "content": { "parts": [{ "text": "Hello" }, { "text": " there!" }], "role": "model" },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{ "category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE" }]
          }],
          "usageMetadata": {
            "promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15,
            "cachedContentTokenCount": 4,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 12 }]
          },
          "modelVersion": "gemini-2.5-flash",
          "responseId": "mbtQaOTmFZmD1dkP"
        }"#;
        let got = decode_response(body).unwrap();
        assert_eq!(
            got,
            ChatResponse {
                id: "mbtQaOTmFZmD1dkP".into(),
                model: "gemini-2.5-flash".into(),
                parts: vec![text("Hello there!")],
                stop: StopReason::EndTurn,
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                    cached_input_tokens: 4,
                    cache_creation_tokens: 0,
                    reasoning_tokens: 0,
                },
                created: None,
            }
        );
    }

    #[test]
    fn decodes_parallel_function_calls() {
        let body = br#"{
          "candidates": [{
            "content": { "role": "model", "parts": [
              { "text": "Let me check." },
              { "functionCall": { "name": "get_weather", "args": { "city": "Paris" } }, "thoughtSignature": "CiQB" },
              { "functionCall": { "name": "get_weather", "args": { "city": "Rome" } } },
              { "functionCall": { "id": "given-id", "name": "now" } }
            ] },
            "finishReason": "STOP",
            "index": 0
          }],
          "usageMetadata": { "promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 70 },
          "modelVersion": "gemini-2.5-pro",
          "responseId": "r-1/x"
        }"#;
        let got = decode_response(body).unwrap();
        assert_eq!(got.stop, StopReason::ToolUse);
        assert_eq!(
            got.parts,
            vec![
                text("Let me check."),
                Part::ToolCall {
                    id: "call_r-1x_0".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                Part::ToolCall {
                    id: "call_r-1x_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Rome"}"#.into()
                },
                Part::ToolCall {
                    id: "given-id".into(),
                    name: "now".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(got.usage.input_tokens, 50);
        assert_eq!(got.usage.output_tokens, 20);
    }

    #[test]
    fn calls_without_a_response_id_still_get_distinct_ids() {
        let body = br#"{"candidates":[{"content":{"parts":[
            {"functionCall":{"name":"a","args":{}}},{"functionCall":{"name":"b","args":{}}}]},"finishReason":"STOP"}]}"#;
        let ids = |r: ChatResponse| -> Vec<String> {
            r.parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::ToolCall { id, .. } => Some(id),
                    _ => None,
                })
                .collect()
        };
        let one = ids(decode_response(body).unwrap());
        let two = ids(decode_response(body).unwrap());
        assert_eq!(one.len(), 2);
        assert_ne!(one[0], one[1]);
        assert_ne!(one, two, "ids differ between answers");
        assert!(one[0].starts_with("call_"));
    }

    #[test]
    fn decodes_thoughts_and_reasoning_tokens() {
        let body = br#"{
          "candidates": [{
            "content": { "role": "model", "parts": [
              { "text": "**Planning**\nThe user wants", "thought": true },
              { "text": " a haiku.", "thought": true, "thoughtSignature": "EtYBCtMB" },
              { "text": "Leaves fall" }
            ] },
            "finishReason": "MAX_TOKENS"
          }],
          "usageMetadata": { "promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 30,
                             "toolUsePromptTokenCount": 1, "totalTokenCount": 42 },
          "modelVersion": "gemini-2.5-flash",
          "responseId": "t1"
        }"#;
        let got = decode_response(body).unwrap();
        assert_eq!(
            got.parts,
            vec![
                Part::Thinking {
                    text: "**Planning**\nThe user wants a haiku.".into(),
                    signature: Some("EtYBCtMB".into())
                },
                text("Leaves fall"),
            ]
        );
        assert_eq!(got.stop, StopReason::MaxTokens);
        assert_eq!(
            got.usage,
            Usage {
                input_tokens: 10,
                output_tokens: 32,
                cached_input_tokens: 0,
                cache_creation_tokens: 0,
                reasoning_tokens: 30,
            }
        );
    }

    #[test]
    fn finish_reasons() {
        let cases = [
            ("STOP", false, StopReason::EndTurn),
            ("STOP", true, StopReason::ToolUse),
            ("MAX_TOKENS", true, StopReason::MaxTokens),
            ("SAFETY", false, StopReason::ContentFilter),
            ("RECITATION", false, StopReason::ContentFilter),
            ("BLOCKLIST", false, StopReason::ContentFilter),
            ("PROHIBITED_CONTENT", false, StopReason::ContentFilter),
            ("SPII", false, StopReason::ContentFilter),
            ("IMAGE_SAFETY", false, StopReason::ContentFilter),
            (
                "MALFORMED_FUNCTION_CALL",
                false,
                StopReason::Other("MALFORMED_FUNCTION_CALL".into()),
            ),
            ("OTHER", false, StopReason::Other("OTHER".into())),
        ];
        for (reason, called, want) in cases {
            assert_eq!(stop_reason(reason, called), want, "{reason}");
        }
    }

    #[test]
    fn decodes_a_safety_stop_and_a_blocked_prompt() {
        let body = br#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[
            {"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]}],
            "usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"modelVersion":"gemini-2.0-flash","responseId":"s"}"#;
        let got = decode_response(body).unwrap();
        assert_eq!(got.stop, StopReason::ContentFilter);
        assert!(got.parts.is_empty());
        assert_eq!(got.usage.input_tokens, 7);

        let blocked = br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},
            "usageMetadata":{"promptTokenCount":5,"totalTokenCount":5},"modelVersion":"gemini-2.5-flash"}"#;
        let got = decode_response(blocked).unwrap();
        assert_eq!(got.stop, StopReason::ContentFilter);
        assert_eq!(got.usage.input_tokens, 5);
    }

    #[test]
    fn undecodable_answers_are_errors() {
        for body in [&b"not json"[..], b"[]", b"{}", br#"{"candidates":"x"}"#] {
            assert!(
                decode_response(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn maps_errors() {
        let google = |code: u16, status: &str, message: &str| {
            json!({ "error": { "code": code, "message": message, "status": status } }).to_string()
        };
        let invalid_key = json!({ "error": {
            "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{ "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                          "domain": "googleapis.com" }]
        } })
        .to_string();
        let cases: Vec<(u16, String, u16, ErrorKind, &str)> = vec![
            (
                429,
                google(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
                429,
                ErrorKind::RateLimit,
                "Quota exceeded",
            ),
            (
                503,
                google(503, "UNAVAILABLE", "The model is overloaded."),
                503,
                ErrorKind::Overloaded,
                "The model is overloaded.",
            ),
            (
                400,
                google(400, "INVALID_ARGUMENT", "Bad field"),
                400,
                ErrorKind::InvalidRequest,
                "Bad field",
            ),
            (
                400,
                google(400, "FAILED_PRECONDITION", "Billing"),
                400,
                ErrorKind::InvalidRequest,
                "Billing",
            ),
            (
                400,
                invalid_key,
                401,
                ErrorKind::Authentication,
                "API key not valid. Please pass a valid API key.",
            ),
            (
                401,
                google(401, "UNAUTHENTICATED", "No creds"),
                401,
                ErrorKind::Authentication,
                "No creds",
            ),
            (
                403,
                google(403, "PERMISSION_DENIED", "Denied"),
                403,
                ErrorKind::Permission,
                "Denied",
            ),
            (
                404,
                google(404, "NOT_FOUND", "models/x is not found"),
                404,
                ErrorKind::NotFound,
                "models/x is not found",
            ),
            (
                500,
                google(500, "INTERNAL", "An internal error has occurred."),
                500,
                ErrorKind::Server,
                "An internal error has occurred.",
            ),
            (
                504,
                google(504, "DEADLINE_EXCEEDED", "Deadline"),
                504,
                ErrorKind::Timeout,
                "Deadline",
            ),
            (
                429,
                format!("[{}]", google(429, "RESOURCE_EXHAUSTED", "in an array")),
                429,
                ErrorKind::RateLimit,
                "in an array",
            ),
            (
                502,
                "<html><body>Bad Gateway</body></html>".into(),
                502,
                ErrorKind::Server,
                "Gemini returned HTTP 502",
            ),
            (
                503,
                "upstream connect error".into(),
                503,
                ErrorKind::Overloaded,
                "upstream connect error",
            ),
            (
                413,
                String::new(),
                413,
                ErrorKind::RequestTooLarge,
                "Gemini returned HTTP 413",
            ),
            (
                413,
                google(400, "INVALID_ARGUMENT", "Request payload size exceeds the limit"),
                413,
                ErrorKind::RequestTooLarge,
                "Request payload size exceeds the limit",
            ),
            (
                418,
                r#"{"error":{"code":418}}"#.into(),
                400,
                ErrorKind::InvalidRequest,
                "Gemini returned HTTP 418",
            ),
            (
                500,
                r#"{"error":{"code":500,"message":"odd","status":"SOMETHING_NEW"}}"#.into(),
                500,
                ErrorKind::Server,
                "odd",
            ),
        ];
        for (status, body, want_status, want_kind, want_message) in cases {
            let got = decode_error(status, body.as_bytes());
            assert_eq!(
                got,
                ir::ErrorInfo {
                    status: want_status,
                    kind: want_kind,
                    message: want_message.into()
                },
                "{status} {body}"
            );
        }
    }

    /// A recorded-shape stream: thoughts, text in chunks, a function call, then the last
    /// chunk with the finish reason and usage. Events end with `\r\n\r\n`, as Gemini's do.
    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Weighing** the ask\",\"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 31,\"totalTokenCount\": 31},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"I'll check \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 31,\"totalTokenCount\": 31},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"the weather — \\u00e9t\\u00e9.\"}],\"role\": \"model\"},\"index\": 0}],\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}},\"thoughtSignature\": \"CiIBVKhc\"},{\"functionCall\": {\"name\": \"get_time\",\"args\": {}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 31,\"candidatesTokenCount\": 24,\"totalTokenCount\": 95,\"thoughtsTokenCount\": 40,\"cachedContentTokenCount\": 8},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
    );

    fn expected_stream() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "7Z1QaKn".into(),
                model: "gemini-2.5-flash".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Thinking("**Weighing** the ask".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::Text("I'll check ".into()),
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::Text("the weather — été.".into()),
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::ToolCall {
                    id: "call_7Z1QaKn_0".into(),
                    name: "get_weather".into(),
                },
            },
            StreamEvent::Delta {
                index: 2,
                delta: Delta::ToolArguments(r#"{"city":"Paris"}"#.into()),
            },
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::BlockStart {
                index: 3,
                kind: BlockKind::ToolCall {
                    id: "call_7Z1QaKn_1".into(),
                    name: "get_time".into(),
                },
            },
            StreamEvent::Delta {
                index: 3,
                delta: Delta::ToolArguments("{}".into()),
            },
            StreamEvent::BlockStop { index: 3 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 31,
                output_tokens: 64,
                cached_input_tokens: 8,
                cache_creation_tokens: 0,
                reasoning_tokens: 40,
            }),
            StreamEvent::Done,
        ]
    }

    /// Frames, parses and decodes `parts` in order, then finishes.
    fn run_stream(parts: &[&[u8]]) -> Vec<StreamEvent> {
        let mut framer = SseFramer::default();
        let mut decoder = StreamDecoder::new();
        let mut out = Vec::new();
        for part in parts {
            if let Some(events) = framer.push(Bytes::copy_from_slice(part)).unwrap() {
                for event in parse_events(&events) {
                    out.extend(decoder.decode(&event).unwrap());
                }
            }
        }
        assert_eq!(framer.pending(), 0);
        out.extend(decoder.finish());
        out
    }

    #[test]
    fn stream_decodes_the_same_however_the_bytes_are_split() {
        let bytes = STREAM.as_bytes();
        let want = expected_stream();
        assert_eq!(run_stream(&[bytes]), want);
        for i in 0..=bytes.len() {
            assert_eq!(run_stream(&[&bytes[..i], &bytes[i..]]), want, "split at {i}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run_stream(&single), want);
    }

    #[test]
    fn finish_needs_a_finish_reason() {
        let events = parse_events(STREAM.as_bytes());
        let (last, rest) = events.split_last().unwrap();

        let mut cut = StreamDecoder::new();
        for event in rest {
            cut.decode(event).unwrap();
        }
        assert!(!cut.saw_finish());
        assert_eq!(cut.finish(), vec![], "a cut stream ends with nothing");

        let mut whole = StreamDecoder::new();
        for event in rest {
            whole.decode(event).unwrap();
        }
        whole.decode(last).unwrap();
        assert!(whole.saw_finish());
        let end = whole.finish();
        assert_eq!(end.last(), Some(&StreamEvent::Done));
        assert_eq!(whole.finish(), vec![], "finish emits once");
    }

    #[test]
    fn finish_closes_an_open_text_block() {
        let mut decoder = StreamDecoder::new();
        let chunk = |json: &str| SseEvent {
            event: None,
            data: json.into(),
        };
        let first = decoder
            .decode(&chunk(
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}],"modelVersion":"m","responseId":"r"}"#,
            ))
            .unwrap();
        assert_eq!(
            first,
            vec![
                StreamEvent::Start {
                    id: "r".into(),
                    model: "m".into()
                },
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::Text
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Text("Hi".into())
                },
            ]
        );
        // The last chunk: empty text, a signature on it, the finish reason, no usage.
        let last = decoder
            .decode(&chunk(
                r#"{"candidates":[{"content":{"parts":[{"text":"","thoughtSignature":"x"}],"role":"model"},"finishReason":"MAX_TOKENS"}],"modelVersion":"m","responseId":"r"}"#,
            ))
            .unwrap();
        assert_eq!(last, vec![]);
        assert_eq!(
            decoder.finish(),
            vec![
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::Finish {
                    stop: StopReason::MaxTokens
                },
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn stream_thought_signatures_and_blocked_prompts() {
        let chunk = |json: &str| SseEvent {
            event: None,
            data: json.into(),
        };
        let mut decoder = StreamDecoder::new();
        let got = decoder
            .decode(&chunk(
                r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"","thought":true,"thoughtSignature":"sig"}]}}]}"#,
            ))
            .unwrap();
        assert_eq!(
            got[1..],
            [
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::Thinking
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Thinking("plan".into())
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Signature("sig".into())
                },
            ]
        );

        let mut blocked = StreamDecoder::new();
        blocked
            .decode(&chunk(
                r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3},"responseId":"b"}"#,
            ))
            .unwrap();
        assert!(blocked.saw_finish());
        assert_eq!(
            blocked.finish(),
            vec![
                StreamEvent::Finish {
                    stop: StopReason::ContentFilter
                },
                StreamEvent::Usage(Usage {
                    input_tokens: 3,
                    ..Usage::default()
                }),
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn stream_errors_end_the_stream() {
        let mut decoder = StreamDecoder::new();
        let event = SseEvent {
            event: None,
            data: r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#.into(),
        };
        assert_eq!(
            decoder.decode(&event).unwrap(),
            vec![StreamEvent::Error(ir::ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "The model is overloaded. Please try again later.".into(),
            })]
        );
        assert_eq!(decoder.finish(), vec![]);
        assert!(
            decoder
                .decode(&SseEvent {
                    event: None,
                    data: "not json".into()
                })
                .unwrap()
                .is_empty(),
            "nothing after an error"
        );

        let mut fresh = StreamDecoder::new();
        assert!(
            fresh
                .decode(&SseEvent {
                    event: None,
                    data: "{not json".into()
                })
                .is_err()
        );
        assert!(
            fresh
                .decode(&SseEvent {
                    event: None,
                    data: String::new()
                })
                .unwrap()
                .is_empty()
        );
    }
}
