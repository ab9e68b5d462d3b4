//! OpenAI Chat Completions ⇄ the canonical model ([`ir`]), for translated traffic only.
//!
//! Same-format traffic never comes here (it takes the shallow path in the parent module).
//! This module owns the typed wire shapes of `/v1/chat/completions`: request, response,
//! `chat.completion.chunk` streams and error bodies, each decoded into [`ir`] and encoded
//! out of it. Whatever the OpenAI shape cannot carry is recorded in [`ir::Dropped`] by name.
//!
//! Thinking travels the way OpenAI-compatible clients and gateways carry it:
//! `reasoning_content` (text) and `thinking_blocks` (with signatures, and redacted blocks),
//! so an OpenAI caller that sends an assistant turn back keeps its signatures intact.
//!
//! Streams: OpenAI may send the argument fragments of parallel tool calls interleaved by
//! `index`; [`StreamDecoder`] keeps the IR rule that blocks never interleave (see
//! [`ir::StreamEvent`]) by streaming the oldest open block live and holding the others
//! back until it is complete.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::error_body;
use super::usage::WireUsage;
use crate::formats::ir::{
    self, BlockKind, ChatRequest, ChatResponse, Delta, ErrorInfo, ErrorKind, ImageSource, Message, Part,
    ResponseFormat, Role, StopReason, StreamEvent, SystemBlock, Tool, ToolChoice, Usage,
};
use crate::formats::json::{BodyError, ShallowBody};
use crate::formats::sse::{SseEvent, write_event};

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// OpenAI chat request body → IR.
///
/// Top-level fields the IR has no place for (`n`, `logprobs`, `seed`, `presence_penalty`,
/// `metadata`, unknown ones…) go to [`ChatRequest::extra`] with their raw value, in request
/// order. A body that is not a valid chat request (no `messages` array, unknown role, bad
/// content part, mistyped parameter) is a [`BodyError`] naming the parameter.
///
/// Message-level details the IR cannot hold (`name`, image `detail`) are lost here; use
/// [`decode_request_reporting`] to learn which.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, BodyError> {
    decode_request_reporting(body, &mut ir::Dropped::default())
}

/// [`decode_request`], recording in `dropped` what the IR cannot hold: `message_name`
/// (the `name` of a message), `image_detail` (an image `detail` other than `auto`) and
/// `message_<field>` for any other non-empty message field it does not know.
pub fn decode_request_reporting(body: &[u8], dropped: &mut ir::Dropped) -> Result<ChatRequest, BodyError> {
    let shallow = ShallowBody::parse(body)?;
    let mut req = ChatRequest {
        model: shallow.model()?.into_owned(),
        ..ChatRequest::default()
    };
    let mut messages = None;
    let mut max_completion_tokens = None;
    let mut max_tokens = None;
    for (key, raw) in shallow.entries() {
        let raw: &RawValue = raw;
        match key {
            "model" => {}
            "messages" => messages = Some(raw),
            "stream" => req.stream = shallow.stream()?,
            "stream_options" => {
                let opts: Option<WireStreamOptions> = field(raw, "stream_options")?;
                req.include_usage = opts.and_then(|o| o.include_usage).unwrap_or(false);
            }
            "max_completion_tokens" => max_completion_tokens = field(raw, "max_completion_tokens")?,
            "max_tokens" => max_tokens = field(raw, "max_tokens")?,
            "temperature" => req.temperature = field(raw, "temperature")?,
            "top_p" => req.top_p = field(raw, "top_p")?,
            "user" => req.user = field(raw, "user")?,
            "reasoning_effort" => req.reasoning_effort = field(raw, "reasoning_effort")?,
            "parallel_tool_calls" => req.parallel_tool_calls = field(raw, "parallel_tool_calls")?,
            "stop" => req.stop = decode_stop(field(raw, "stop")?)?,
            "tools" => req.tools = decode_tools(field(raw, "tools")?.unwrap_or_default(), dropped)?,
            "tool_choice" => {
                req.tool_choice = field::<Value>(raw, "tool_choice")?
                    .map(decode_tool_choice)
                    .transpose()?
            }
            "response_format" => {
                req.response_format = field::<Value>(raw, "response_format")?
                    .map(decode_response_format)
                    .transpose()?;
            }
            other => {
                let value: Value = serde_json::from_str(raw.get())
                    .map_err(|e| BodyError::new(format!("invalid `{other}`: {e}"), None))?;
                req.extra.push((other.to_owned(), value));
            }
        }
    }
    req.max_tokens = max_completion_tokens.or(max_tokens);
    let messages =
        messages.ok_or_else(|| BodyError::new("you must provide a messages parameter", Some("messages")))?;
    let messages: Vec<&RawValue> = serde_json::from_str(messages.get())
        .map_err(|_| BodyError::new("messages must be an array of message objects", Some("messages")))?;
    decode_messages(&messages, &mut req, dropped)?;
    Ok(req)
}

/// Deserializes an optional top-level parameter (`null` is absent).
fn field<T: DeserializeOwned>(raw: &RawValue, param: &'static str) -> Result<Option<T>, BodyError> {
    serde_json::from_str::<Option<T>>(raw.get())
        .map_err(|e| BodyError::new(format!("invalid `{param}`: {e}"), Some(param)))
}

fn bad_messages(message: impl Into<String>) -> BodyError {
    BodyError::new(message, Some("messages"))
}

#[derive(Deserialize)]
struct WireStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn decode_stop(stop: Option<Value>) -> Result<Vec<String>, BodyError> {
    let invalid = || BodyError::new("stop must be a string or an array of strings", Some("stop"));
    match stop {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid()),
            })
            .collect(),
        Some(_) => Err(invalid()),
    }
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    function: Option<WireFunctionDef>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
struct WireFunctionDef {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    cache_control: Option<Value>,
    /// Strict schema adherence; no other format can promise it.
    #[serde(default)]
    strict: Option<bool>,
}

fn decode_tools(tools: Vec<Value>, dropped: &mut ir::Dropped) -> Result<Vec<Tool>, BodyError> {
    let bad = |msg: String| BodyError::new(msg, Some("tools"));
    tools
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let tool: WireTool = serde_json::from_value(raw).map_err(|e| bad(format!("tools[{i}]: {e}")))?;
            if tool.kind != "function" {
                return Err(bad(format!(
                    "tools[{i}]: tool type `{}` cannot be translated for this model; only `function` tools can",
                    tool.kind
                )));
            }
            let function = tool.function.ok_or_else(|| bad(format!("tools[{i}]: missing `function`")))?;
            if function.strict == Some(true) {
                dropped.add("strict");
            }
            Ok(Tool {
                name: function.name,
                description: function.description,
                // An omitted schema means a function without parameters.
                parameters: function
                    .parameters
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
                cache_control: tool.cache_control.or(function.cache_control),
            })
        })
        .collect()
}

fn decode_tool_choice(choice: Value) -> Result<ToolChoice, BodyError> {
    let bad = || {
        BodyError::new(
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
            Some("tool_choice"),
        )
    };
    match &choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Value::Object(obj) if obj.get("type").and_then(Value::as_str) == Some("function") => obj
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Tool(name.to_owned()))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn decode_response_format(format: Value) -> Result<ResponseFormat, BodyError> {
    let bad = |msg: &str| BodyError::new(msg.to_owned(), Some("response_format"));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = format
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("response_format of type json_schema needs a `json_schema` object"))?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("response_format.json_schema needs a `name`"))?;
            Ok(ResponseFormat::JsonSchema {
                name: name.to_owned(),
                schema: spec.get("schema").cloned().unwrap_or(Value::Null),
                strict: spec.get("strict").and_then(Value::as_bool),
            })
        }
        _ => Err(bad(
            "response_format type must be text, json_object or json_schema",
        )),
    }
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<WireThinkingBlock>>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    cache_control: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: WireFunctionCall,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// One entry of `thinking_blocks`, in requests, responses and stream deltas.
#[derive(Deserialize)]
struct WireThinkingBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct WirePart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    image_url: Option<WireImageUrl>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireImageUrl {
    Object {
        url: String,
        #[serde(default)]
        detail: Option<String>,
    },
    Url(String),
}

/// Whether a message field carries nothing (SDKs echo `"audio": null`, `"annotations": []`…).
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn decode_messages(
    wire: &[&RawValue],
    req: &mut ChatRequest,
    dropped: &mut ir::Dropped,
) -> Result<(), BodyError> {
    // Whether the last IR message holds the results of a run of `tool` messages.
    let mut in_tool_run = false;
    for (i, raw) in wire.iter().enumerate() {
        let mut m: WireMessage =
            serde_json::from_str(raw.get()).map_err(|e| bad_messages(format!("messages[{i}]: {e}")))?;
        if m.name.as_ref().is_some_and(|n| !n.is_null()) {
            dropped.add("message_name");
        }
        for (key, value) in &m.other {
            if !is_empty_value(value) {
                dropped.add(format!("message_{key}"));
            }
        }
        let role = std::mem::take(&mut m.role);
        match role.as_str() {
            "system" | "developer" => {
                let content = m
                    .content
                    .ok_or_else(|| bad_messages(format!("messages[{i}].content is required")))?;
                let mut parts = decode_content(content, i, dropped)?;
                apply_message_cache_control(&mut parts, m.cache_control);
                for part in parts {
                    match part {
                        Part::Text { text, cache_control } => {
                            req.system.push(SystemBlock { text, cache_control })
                        }
                        _ => {
                            return Err(bad_messages(format!(
                                "messages[{i}]: {role} messages accept only text content"
                            )));
                        }
                    }
                }
            }
            "user" => {
                let content = m
                    .content
                    .ok_or_else(|| bad_messages(format!("messages[{i}].content is required")))?;
                let mut parts = decode_content(content, i, dropped)?;
                apply_message_cache_control(&mut parts, m.cache_control);
                req.messages.push(Message {
                    role: Role::User,
                    parts,
                });
            }
            "assistant" => {
                let parts = decode_assistant(m, i, dropped)?;
                req.messages.push(Message {
                    role: Role::Assistant,
                    parts,
                });
            }
            "tool" => {
                let call_id = m.tool_call_id.ok_or_else(|| {
                    bad_messages(format!("messages[{i}]: tool messages need a tool_call_id"))
                })?;
                let content = match m.content {
                    None => Vec::new(),
                    Some(Value::String(s)) if s.is_empty() => Vec::new(),
                    Some(content) => decode_content(content, i, dropped)?,
                };
                let result = Part::ToolResult {
                    call_id,
                    content,
                    is_error: false,
                    cache_control: m.cache_control,
                };
                match req.messages.last_mut() {
                    Some(last) if in_tool_run => last.parts.push(result),
                    _ => req.messages.push(Message {
                        role: Role::User,
                        parts: vec![result],
                    }),
                }
            }
            "function" => {
                return Err(bad_messages(format!(
                    "messages[{i}]: role `function` (deprecated function calling) cannot be translated; use tools"
                )));
            }
            other => {
                return Err(bad_messages(format!(
                    "messages[{i}]: unknown role `{other}`; expected system, developer, user, assistant or tool"
                )));
            }
        }
        in_tool_run = role == "tool";
    }
    Ok(())
}

/// A message-level `cache_control` marks the message's last block, as in Anthropic's format.
fn apply_message_cache_control(parts: &mut [Part], cache_control: Option<Value>) {
    let Some(cc) = cache_control.filter(|v| !v.is_null()) else {
        return;
    };
    if let Some(Part::Text { cache_control, .. } | Part::Image { cache_control, .. }) = parts.last_mut()
        && cache_control.is_none()
    {
        *cache_control = Some(cc);
    }
}

/// Message content (a string or an array of parts) → IR parts.
fn decode_content(content: Value, i: usize, dropped: &mut ir::Dropped) -> Result<Vec<Part>, BodyError> {
    match content {
        Value::String(text) => Ok(vec![Part::Text {
            text,
            cache_control: None,
        }]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(j, item)| decode_part(item, i, j, dropped))
            .collect(),
        _ => Err(bad_messages(format!(
            "messages[{i}].content must be a string or an array of content parts"
        ))),
    }
}

fn decode_part(item: Value, i: usize, j: usize, dropped: &mut ir::Dropped) -> Result<Part, BodyError> {
    let at = || format!("messages[{i}].content[{j}]");
    let part: WirePart = serde_json::from_value(item).map_err(|e| bad_messages(format!("{}: {e}", at())))?;
    let cache_control = part.cache_control.filter(|v| !v.is_null());
    match part.kind.as_str() {
        "text" => {
            let text = part
                .text
                .ok_or_else(|| bad_messages(format!("{}: text parts need `text`", at())))?;
            Ok(Part::Text { text, cache_control })
        }
        "refusal" => Ok(Part::Text {
            text: part.refusal.unwrap_or_default(),
            cache_control,
        }),
        "image_url" => {
            let (url, detail) = match part.image_url {
                Some(WireImageUrl::Object { url, detail }) => (url, detail),
                Some(WireImageUrl::Url(url)) => (url, None),
                None => {
                    return Err(bad_messages(format!(
                        "{}: image_url parts need `image_url`",
                        at()
                    )));
                }
            };
            if detail.as_deref().is_some_and(|d| d != "auto") {
                dropped.add("image_detail");
            }
            let source = image_source(url).ok_or_else(|| {
                bad_messages(format!(
                    "{}: image data URLs must look like data:<media type>;base64,<data>",
                    at()
                ))
            })?;
            Ok(Part::Image {
                source,
                cache_control,
            })
        }
        "input_audio" | "file" => Err(bad_messages(format!(
            "{}: content part type `{}` cannot be translated for this model",
            at(),
            part.kind
        ))),
        other => Err(bad_messages(format!(
            "{}: unknown content part type `{other}`",
            at()
        ))),
    }
}

/// An image URL → IR source: `data:` URLs become inline base64, anything else stays a URL.
fn image_source(url: String) -> Option<ImageSource> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Some(ImageSource::Url(url));
    };
    let (meta, data) = rest.split_once(',')?;
    let meta = meta.strip_suffix(";base64")?;
    let media_type = meta.split(';').next().unwrap_or_default();
    if media_type.is_empty() {
        return None;
    }
    Some(ImageSource::Base64 {
        media_type: media_type.to_owned(),
        data: data.to_owned(),
    })
}

fn decode_thinking_blocks(blocks: Vec<WireThinkingBlock>) -> Result<Vec<Part>, String> {
    blocks
        .into_iter()
        .map(|b| match b.kind.as_str() {
            "thinking" => Ok(Part::Thinking {
                text: b.thinking.unwrap_or_default(),
                signature: b.signature.filter(|s| !s.is_empty()),
            }),
            "redacted_thinking" => Ok(Part::RedactedThinking {
                data: b.data.unwrap_or_default(),
            }),
            other => Err(format!("unknown thinking block type `{other}`")),
        })
        .collect()
}

/// Arguments as JSON text: strings are taken as they are, anything else is serialized.
fn arguments_text(arguments: Value) -> String {
    match arguments {
        Value::String(s) => s,
        Value::Null => "{}".to_owned(),
        other => other.to_string(),
    }
}

fn decode_assistant(m: WireMessage, i: usize, dropped: &mut ir::Dropped) -> Result<Vec<Part>, BodyError> {
    let mut parts = Vec::new();
    match m.thinking_blocks.filter(|b| !b.is_empty()) {
        Some(blocks) => parts
            .extend(decode_thinking_blocks(blocks).map_err(|e| bad_messages(format!("messages[{i}]: {e}")))?),
        None => {
            if let Some(text) = m.reasoning_content.filter(|t| !t.is_empty()) {
                parts.push(Part::Thinking {
                    text,
                    signature: None,
                });
            }
        }
    }
    let mut text_parts = match m.content {
        None => Vec::new(),
        Some(content) => decode_content(content, i, dropped)?,
    };
    if text_parts.iter().any(|p| !matches!(p, Part::Text { .. })) {
        return Err(bad_messages(format!(
            "messages[{i}]: assistant messages accept only text content"
        )));
    }
    text_parts.retain(|p| !matches!(p, Part::Text { text, cache_control: None } if text.is_empty()));
    if let Some(refusal) = m.refusal.filter(|r| !r.is_empty()) {
        text_parts.push(Part::Text {
            text: refusal,
            cache_control: None,
        });
    }
    apply_message_cache_control(&mut text_parts, m.cache_control);
    parts.extend(text_parts);
    for (j, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
        if call.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(bad_messages(format!(
                "messages[{i}].tool_calls[{j}]: only function tool calls can be translated"
            )));
        }
        parts.push(Part::ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: arguments_text(call.function.arguments),
        });
    }
    Ok(parts)
}

/// OpenAI chat parameters that may reach an OpenAI-format provider from [`ChatRequest::extra`].
/// Any other extra field came from another format and is reported as dropped.
const OPENAI_EXTRA: &[&str] = &[
    "n",
    "logprobs",
    "top_logprobs",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "service_tier",
    "store",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "metadata",
    "functions",
    "function_call",
    "verbosity",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
];

const OPENAI_SERVICE_TIERS: &[&str] = &["auto", "default", "flex", "scale", "priority"];

#[derive(Serialize)]
struct OutRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<OutStreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(flatten)]
    extra: OutExtra<'a>,
}

#[derive(Serialize)]
struct OutStreamOptions {
    include_usage: bool,
}

/// Extra top-level fields, serialized as entries of the enclosing object.
struct OutExtra<'a>(Vec<&'a (String, Value)>);

impl Serialize for OutExtra<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Option<OutContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutContent<'a> {
    Text(&'a str),
    Parts(Vec<OutPart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutPart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: OutImageUrl<'a> },
}

#[derive(Serialize)]
struct OutImageUrl<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct OutTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunctionDef<'a>,
}

#[derive(Serialize)]
struct OutFunctionDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Value::is_null")]
    parameters: &'a Value,
}

#[derive(Serialize)]
struct OutToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunctionCall<'a>,
}

#[derive(Serialize)]
struct OutFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// IR → OpenAI chat request body for `model`.
///
/// A streamed request always asks for `stream_options.include_usage` (the gateway meters
/// every stream; whether the caller wants the usage chunk is `req.include_usage`, honoured
/// by the caller-side encoder). Extra fields that are OpenAI chat parameters pass through
/// as they are. Recorded in `dropped`: `top_k`, `thinking` (a thinking budget, or thinking
/// parts in the history), `redacted_thinking`, `cache_control`, `tool_result_is_error`,
/// `tool_result_image`, `assistant_image`, `misplaced_tool_call` / `misplaced_tool_result`
/// (a part in a role OpenAI does not allow it in), and the name of every extra field that
/// is not an OpenAI parameter.
pub fn encode_request(req: &ChatRequest, model: &str, dropped: &mut ir::Dropped) -> Bytes {
    if req.top_k.is_some() {
        dropped.add("top_k");
    }
    if req.thinking.is_some() {
        dropped.add("thinking");
    }
    let mut extra = Vec::new();
    for entry in &req.extra {
        let (key, value) = entry;
        let passes = OPENAI_EXTRA.contains(&key.as_str())
            && (key != "service_tier" || value.as_str().is_some_and(|t| OPENAI_SERVICE_TIERS.contains(&t)));
        if passes {
            extra.push(entry);
        } else {
            dropped.add(key.clone());
        }
    }
    let out = OutRequest {
        model,
        messages: encode_messages(req, dropped),
        tools: req
            .tools
            .iter()
            .map(|t| {
                if t.cache_control.is_some() {
                    dropped.add("cache_control");
                }
                OutTool {
                    kind: "function",
                    function: OutFunctionDef {
                        name: &t.name,
                        description: t.description.as_deref(),
                        parameters: &t.parameters,
                    },
                }
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => Value::from("auto"),
            ToolChoice::None => Value::from("none"),
            ToolChoice::Required => Value::from("required"),
            ToolChoice::Tool(name) => serde_json::json!({"type": "function", "function": {"name": name}}),
        }),
        parallel_tool_calls: req.parallel_tool_calls,
        max_completion_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: &req.stop,
        stream: req.stream.then_some(true),
        stream_options: req.stream.then_some(OutStreamOptions { include_usage: true }),
        response_format: req.response_format.as_ref().map(|f| match f {
            ResponseFormat::Text => serde_json::json!({"type": "text"}),
            ResponseFormat::JsonObject => serde_json::json!({"type": "json_object"}),
            ResponseFormat::JsonSchema { name, schema, strict } => {
                let mut spec = Map::new();
                spec.insert("name".into(), Value::from(name.as_str()));
                if !schema.is_null() {
                    spec.insert("schema".into(), schema.clone());
                }
                if let Some(strict) = strict {
                    spec.insert("strict".into(), Value::from(*strict));
                }
                serde_json::json!({"type": "json_schema", "json_schema": spec})
            }
        }),
        reasoning_effort: req.reasoning_effort.as_deref(),
        user: req.user.as_deref(),
        extra: OutExtra(extra),
    };
    serde_json::to_vec(&out).map(Bytes::from).unwrap_or_default()
}

fn text_content<'a>(texts: Vec<&'a str>) -> OutContent<'a> {
    match texts.as_slice() {
        [] => OutContent::Text(""),
        [one] => OutContent::Text(one),
        _ => OutContent::Parts(texts.into_iter().map(|text| OutPart::Text { text }).collect()),
    }
}

fn encode_image(source: &ImageSource) -> OutPart<'_> {
    let url = match source {
        ImageSource::Url(url) => Cow::Borrowed(url.as_str()),
        ImageSource::Base64 { media_type, data } => Cow::Owned(format!("data:{media_type};base64,{data}")),
    };
    OutPart::ImageUrl {
        image_url: OutImageUrl { url },
    }
}

fn encode_messages<'a>(req: &'a ChatRequest, dropped: &mut ir::Dropped) -> Vec<OutMessage<'a>> {
    let mut out = Vec::with_capacity(req.messages.len() + 1);
    if !req.system.is_empty() {
        if req.system.iter().any(|b| b.cache_control.is_some()) {
            dropped.add("cache_control");
        }
        out.push(OutMessage {
            role: "system",
            content: Some(text_content(req.system.iter().map(|b| b.text.as_str()).collect())),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
    }
    for message in &req.messages {
        match message.role {
            Role::User => encode_user(message, dropped, &mut out),
            Role::Assistant => out.push(encode_assistant(message, dropped)),
        }
    }
    out
}

fn note_shared_drops(part: &Part, dropped: &mut ir::Dropped) {
    match part {
        Part::Text {
            cache_control: Some(_),
            ..
        }
        | Part::Image {
            cache_control: Some(_),
            ..
        } => dropped.add("cache_control"),
        Part::Thinking { .. } => dropped.add("thinking"),
        Part::RedactedThinking { .. } => dropped.add("redacted_thinking"),
        _ => {}
    }
}

/// A user turn: each tool result becomes its own `tool` message, in order, before the rest.
fn encode_user<'a>(message: &'a Message, dropped: &mut ir::Dropped, out: &mut Vec<OutMessage<'a>>) {
    let mut rest = Vec::new();
    for part in &message.parts {
        note_shared_drops(part, dropped);
        match part {
            Part::ToolResult {
                call_id,
                content,
                is_error,
                cache_control,
            } => {
                if *is_error {
                    dropped.add("tool_result_is_error");
                }
                if cache_control.is_some() {
                    dropped.add("cache_control");
                }
                let mut texts = Vec::new();
                for inner in content {
                    note_shared_drops(inner, dropped);
                    match inner {
                        Part::Text { text, .. } => texts.push(text.as_str()),
                        Part::Image { .. } => dropped.add("tool_result_image"),
                        _ => {}
                    }
                }
                out.push(OutMessage {
                    role: "tool",
                    content: Some(text_content(texts)),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call_id),
                });
            }
            Part::Text { text, .. } => rest.push(OutPart::Text { text }),
            Part::Image { source, .. } => rest.push(encode_image(source)),
            Part::ToolCall { .. } => dropped.add("misplaced_tool_call"),
            Part::Thinking { .. } | Part::RedactedThinking { .. } => {}
        }
    }
    let had_results = message.parts.iter().any(|p| matches!(p, Part::ToolResult { .. }));
    if had_results && rest.is_empty() {
        return;
    }
    let content = match rest.as_slice() {
        [] => OutContent::Text(""),
        [OutPart::Text { text }] => OutContent::Text(text),
        _ => OutContent::Parts(rest),
    };
    out.push(OutMessage {
        role: "user",
        content: Some(content),
        tool_calls: Vec::new(),
        tool_call_id: None,
    });
}

fn encode_assistant<'a>(message: &'a Message, dropped: &mut ir::Dropped) -> OutMessage<'a> {
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for part in &message.parts {
        note_shared_drops(part, dropped);
        match part {
            Part::Text { text, .. } => texts.push(text.as_str()),
            Part::ToolCall { id, name, arguments } => tool_calls.push(OutToolCall {
                id,
                kind: "function",
                function: OutFunctionCall { name, arguments },
            }),
            Part::Image { .. } => dropped.add("assistant_image"),
            Part::ToolResult { .. } => dropped.add("misplaced_tool_result"),
            Part::Thinking { .. } | Part::RedactedThinking { .. } => {}
        }
    }
    let content = if texts.is_empty() && !tool_calls.is_empty() {
        None
    } else {
        Some(text_content(texts))
    };
    OutMessage {
        role: "assistant",
        content,
        tool_calls,
        tool_call_id: None,
    }
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct InCompletion {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    choices: Option<Vec<InChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct InChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    message: Option<InMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct InMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<InToolCall>>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<WireThinkingBlock>>,
}

/// A tool call in a response, or a fragment of one in a stream delta.
#[derive(Deserialize)]
struct InToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<InFunction>,
}

#[derive(Deserialize)]
struct InFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

fn stop_from_wire(reason: &str) -> StopReason {
    match reason {
        "stop" => StopReason::EndTurn,
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

/// IR stop reason → `finish_reason`, and whether that lost something OpenAI cannot say.
/// Typed clients reject unknown finish reasons, so only OpenAI's own values are produced.
fn stop_to_wire(stop: &StopReason) -> (&'static str, bool) {
    match stop {
        StopReason::EndTurn | StopReason::StopSequence(_) => ("stop", false),
        StopReason::MaxTokens => ("length", false),
        StopReason::ToolUse => ("tool_calls", false),
        StopReason::ContentFilter => ("content_filter", false),
        StopReason::Other(reason) if reason == "refusal" => ("content_filter", false),
        StopReason::Other(_) => ("stop", true),
    }
}

/// Text of a message `content`: a string, or the text parts of an array.
fn content_text(content: Option<Value>) -> String {
    match content {
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// OpenAI `chat.completion` body → IR. Only choice 0 is translated.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, ir::DecodeError> {
    let wire: InCompletion = serde_json::from_slice(body)
        .map_err(|e| ir::DecodeError(format!("provider sent an invalid chat.completion body: {e}")))?;
    let choice = wire
        .choices
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0);
    let Some(choice) = choice else {
        let detail = wire.error.as_ref().map(|e| error_fields(e).0).unwrap_or_default();
        return Err(ir::DecodeError(if detail.is_empty() {
            "provider sent a chat.completion without choices".to_owned()
        } else {
            format!("provider sent an error instead of a completion: {detail}")
        }));
    };
    let mut parts = Vec::new();
    if let Some(message) = choice.message {
        match message.thinking_blocks.filter(|b| !b.is_empty()) {
            Some(blocks) => parts.extend(decode_thinking_blocks(blocks).map_err(ir::DecodeError)?),
            None => {
                if let Some(text) = message
                    .reasoning_content
                    .or(message.reasoning)
                    .filter(|t| !t.is_empty())
                {
                    parts.push(Part::Thinking {
                        text,
                        signature: None,
                    });
                }
            }
        }
        let text = content_text(message.content);
        if !text.is_empty() {
            parts.push(Part::Text {
                text,
                cache_control: None,
            });
        }
        if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
            parts.push(Part::Text {
                text: refusal,
                cache_control: None,
            });
        }
        for (k, call) in message.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let function = call.function.unwrap_or(InFunction {
                name: None,
                arguments: None,
            });
            parts.push(Part::ToolCall {
                id: call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call_{k}")),
                name: function.name.unwrap_or_default(),
                arguments: arguments_text(function.arguments.unwrap_or(Value::Null)),
            });
        }
    }
    Ok(ChatResponse {
        id: wire.id.unwrap_or_default(),
        model: wire.model.unwrap_or_default(),
        parts,
        stop: choice
            .finish_reason
            .as_deref()
            .map(stop_from_wire)
            .unwrap_or_default(),
        usage: wire.usage.map(|u| u.to_ir()).unwrap_or_default(),
        created: wire.created,
    })
}

#[derive(Serialize)]
struct OutCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [OutChoice<'a>; 1],
    usage: OutUsage,
}

#[derive(Serialize)]
struct OutChoice<'a> {
    index: u32,
    message: OutResponseMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct OutResponseMessage<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<OutThinkingBlock<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutThinkingBlock<'a> {
    Thinking {
        thinking: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<&'a str>,
    },
    RedactedThinking {
        data: &'a str,
    },
}

#[derive(Serialize)]
struct OutUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: OutPromptDetails,
    completion_tokens_details: OutCompletionDetails,
}

#[derive(Serialize)]
struct OutPromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutCompletionDetails {
    reasoning_tokens: u64,
}

impl From<&Usage> for OutUsage {
    fn from(u: &Usage) -> Self {
        OutUsage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens.saturating_add(u.output_tokens),
            prompt_tokens_details: OutPromptDetails {
                cached_tokens: u.cached_input_tokens,
            },
            completion_tokens_details: OutCompletionDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// IR → OpenAI `chat.completion` body.
///
/// Text parts are concatenated into `content`; thinking goes to `reasoning_content` (its
/// text) and `thinking_blocks` (every thinking and redacted block with its signature), so
/// [`decode_request`] gets them back unchanged when the caller sends the turn back. Recorded
/// in `dropped`: `image_output` (images in the answer), `stop_reason` (a provider stop reason
/// OpenAI has no value for; sent as `stop`). A stop sequence is reported as `stop`, which
/// is all OpenAI says; cache-creation tokens have no OpenAI field.
pub fn encode_response(resp: &ChatResponse, dropped: &mut ir::Dropped) -> Bytes {
    let mut text = String::new();
    let mut has_text = false;
    let mut reasoning = Vec::new();
    let mut thinking_blocks = Vec::new();
    let mut tool_calls = Vec::new();
    for part in &resp.parts {
        match part {
            Part::Text { text: t, .. } => {
                has_text = true;
                text.push_str(t);
            }
            Part::Thinking { text: t, signature } => {
                reasoning.push(t.as_str());
                thinking_blocks.push(OutThinkingBlock::Thinking {
                    thinking: t,
                    signature: signature.as_deref(),
                });
            }
            Part::RedactedThinking { data } => {
                thinking_blocks.push(OutThinkingBlock::RedactedThinking { data })
            }
            Part::ToolCall { id, name, arguments } => tool_calls.push(OutToolCall {
                id,
                kind: "function",
                function: OutFunctionCall { name, arguments },
            }),
            Part::Image { .. } => dropped.add("image_output"),
            Part::ToolResult { .. } => dropped.add("misplaced_tool_result"),
        }
    }
    let (finish_reason, lossy) = stop_to_wire(&resp.stop);
    if lossy {
        dropped.add("stop_reason");
    }
    let content = if has_text || tool_calls.is_empty() {
        Some(text)
    } else {
        None
    };
    let out = OutCompletion {
        id: &resp.id,
        object: "chat.completion",
        created: resp.created.unwrap_or_else(unix_now),
        model: &resp.model,
        choices: [OutChoice {
            index: 0,
            message: OutResponseMessage {
                role: "assistant",
                content,
                tool_calls,
                reasoning_content: (!reasoning.is_empty()).then(|| reasoning.concat()),
                thinking_blocks,
            },
            logprobs: None,
            finish_reason,
        }],
        usage: OutUsage::from(&resp.usage),
    };
    serde_json::to_vec(&out).map(Bytes::from).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// `message`, `type` and `code` of an OpenAI-style `error` value (an object or a string).
fn error_fields(error: &Value) -> (String, Option<String>, Option<String>) {
    match error {
        Value::String(message) => (message.clone(), None, None),
        Value::Object(obj) => {
            let text = |key: &str| match obj.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            (text("message").unwrap_or_default(), text("type"), text("code"))
        }
        _ => (String::new(), None, None),
    }
}

/// What an error's `type` or `code` says about its kind, when it says something.
fn kind_from_type(kind: Option<&str>, code: Option<&str>) -> Option<ErrorKind> {
    let any =
        |names: &[&str]| kind.is_some_and(|k| names.contains(&k)) || code.is_some_and(|c| names.contains(&c));
    if any(&[
        "server_is_overloaded",
        "service_unavailable_error",
        "overloaded_error",
        "overloaded",
    ]) {
        Some(ErrorKind::Overloaded)
    } else if any(&[
        "rate_limit_exceeded",
        "rate_limit_error",
        "slow_down",
        "insufficient_quota",
        "tokens",
        "requests",
    ]) {
        Some(ErrorKind::RateLimit)
    } else if any(&["invalid_api_key", "authentication_error"]) {
        Some(ErrorKind::Authentication)
    } else if any(&[
        "permission_error",
        "request_forbidden",
        "unsupported_country_region_territory",
    ]) {
        Some(ErrorKind::Permission)
    } else if any(&["not_found_error", "model_not_found"]) {
        Some(ErrorKind::NotFound)
    } else if any(&["request_too_large"]) {
        Some(ErrorKind::RequestTooLarge)
    } else if any(&["timeout", "timeout_error"]) {
        Some(ErrorKind::Timeout)
    } else if any(&["invalid_request_error"]) {
        Some(ErrorKind::InvalidRequest)
    } else if any(&["server_error", "api_error"]) {
        Some(ErrorKind::Server)
    } else {
        None
    }
}

/// The status a caller gets for an error of this kind when nothing better is known.
fn default_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::Server => 502,
        ErrorKind::Timeout => 504,
    }
}

fn error_info(kind: Option<&str>, code: Option<&str>, message: String, fallback: &str) -> ErrorInfo {
    let kind = kind_from_type(kind, code).unwrap_or(ErrorKind::Server);
    ErrorInfo {
        status: default_status(kind),
        kind,
        message: if message.is_empty() {
            fallback.to_owned()
        } else {
            message
        },
    }
}

/// An OpenAI-format provider's error answer → IR. `body` may be anything (an HTML page
/// from a proxy, say): only a JSON `error` message is passed on, never raw bytes.
///
/// The kind follows the status (refined by `type`/`code` for 5xx, e.g. an overloaded
/// 500); the caller's status is the provider's for 4xx, 503 for overloaded, 504 for
/// timeouts and 502 for other server errors.
pub fn decode_error(status: u16, body: &[u8]) -> ErrorInfo {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // Some OpenAI-compatible providers wrap the error in an array.
    let top = match parsed {
        Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
        other => other,
    };
    let (message, kind, code) = match &top {
        Some(Value::Object(obj)) => match obj.get("error") {
            Some(error) => error_fields(error),
            None => error_fields(&Value::Object(obj.clone())),
        },
        _ => (String::new(), None, None),
    };
    let by_type = kind_from_type(kind.as_deref(), code.as_deref());
    let by_status = match status {
        400 | 422 => Some(ErrorKind::InvalidRequest),
        401 => Some(ErrorKind::Authentication),
        403 => Some(ErrorKind::Permission),
        404 => Some(ErrorKind::NotFound),
        413 => Some(ErrorKind::RequestTooLarge),
        429 => Some(ErrorKind::RateLimit),
        408 | 504 => Some(ErrorKind::Timeout),
        503 | 529 => Some(ErrorKind::Overloaded),
        400..=499 => Some(ErrorKind::InvalidRequest),
        500..=599 => Some(ErrorKind::Server),
        _ => None,
    };
    let kind = match (by_status, by_type) {
        (Some(ErrorKind::Server), Some(refined @ (ErrorKind::Overloaded | ErrorKind::Timeout))) => refined,
        (Some(kind), _) => kind,
        (None, Some(kind)) => kind,
        (None, None) => ErrorKind::Server,
    };
    let caller_status = match kind {
        ErrorKind::Overloaded | ErrorKind::Timeout | ErrorKind::Server => default_status(kind),
        _ if (400..500).contains(&status) => status,
        _ => default_status(kind),
    };
    ErrorInfo {
        status: caller_status,
        kind,
        message: if message.is_empty() {
            format!("the provider answered with status {status}")
        } else {
            message
        },
    }
}

/// OpenAI's `type` and `code` for an error kind (the values OpenAI itself sends).
fn openai_type_code(kind: ErrorKind) -> (&'static str, Option<&'static str>) {
    match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", None),
        ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
        ErrorKind::Permission => ("invalid_request_error", None),
        ErrorKind::NotFound => ("invalid_request_error", None),
        ErrorKind::RequestTooLarge => ("invalid_request_error", Some("request_too_large")),
        ErrorKind::RateLimit => ("rate_limit_error", Some("rate_limit_exceeded")),
        ErrorKind::Overloaded => ("service_unavailable_error", Some("server_is_overloaded")),
        ErrorKind::Server => ("server_error", Some("server_error")),
        ErrorKind::Timeout => ("server_error", Some("timeout")),
    }
}

/// IR error → OpenAI error body `{"error":{"message","type","param","code"}}` and status.
///
/// Overloaded is always 503 (`service_unavailable_error` / `server_is_overloaded`, as
/// OpenAI says it; a 529 means nothing to OpenAI clients). Otherwise `err.status` is kept
/// when it is an error status, else the kind's usual one.
pub fn encode_error(err: &ErrorInfo) -> (StatusCode, Bytes) {
    let status = match err.kind {
        ErrorKind::Overloaded => 503,
        _ if (400..=599).contains(&err.status) && err.status != 529 => err.status,
        kind => default_status(kind),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let (kind, code) = openai_type_code(err.kind);
    (status, error_body(&err.message, kind, None, code))
}

// ---------------------------------------------------------------------------------------
// Streams: decoding
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct InChunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<InChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct InChunkChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<InDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct InDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<WireThinkingBlock>>,
    #[serde(default)]
    tool_calls: Option<Vec<InToolCall>>,
}

/// Tells when streamed JSON arguments form one complete value (an object or array),
/// byte by byte, without parsing them again.
#[derive(Debug, Default)]
struct JsonEnd {
    depth: u32,
    in_string: bool,
    escaped: bool,
    closed: bool,
}

impl JsonEnd {
    fn feed(&mut self, text: &str) {
        for b in text.bytes() {
            if self.closed {
                return;
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.closed = self.depth == 0;
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug)]
enum Pending {
    Text,
    Thinking {
        signed: bool,
    },
    Redacted {
        data: String,
    },
    Tool {
        slot: u32,
        id: String,
        name: String,
        args: JsonEnd,
    },
}

/// A block not yet stopped. Only the first of the queue may be started (streaming live);
/// the others hold their deltas until it is their turn.
#[derive(Debug)]
struct OpenBlock {
    kind: Pending,
    started: bool,
    deltas: Vec<Delta>,
}

impl OpenBlock {
    fn new(kind: Pending) -> Self {
        OpenBlock {
            kind,
            started: false,
            deltas: Vec::new(),
        }
    }

    /// Whether its `BlockStart` can be emitted: a tool call needs its name first.
    fn ready(&self) -> bool {
        match &self.kind {
            Pending::Tool { name, .. } => !name.is_empty(),
            _ => true,
        }
    }

    /// Whether nothing more can arrive for it, given that a later block exists. Text and
    /// thinking only ever grow at the end of the queue; a tool call may receive fragments
    /// until its arguments close.
    fn complete(&self) -> bool {
        match &self.kind {
            Pending::Tool { args, .. } => args.closed,
            _ => true,
        }
    }

    fn block_kind(&self) -> BlockKind {
        match &self.kind {
            Pending::Text => BlockKind::Text,
            Pending::Thinking { .. } => BlockKind::Thinking,
            Pending::Redacted { data } => BlockKind::RedactedThinking { data: data.clone() },
            Pending::Tool { slot, id, name, .. } => BlockKind::ToolCall {
                id: if id.is_empty() {
                    format!("call_{slot}")
                } else {
                    id.clone()
                },
                name: name.clone(),
            },
        }
    }
}

/// OpenAI `chat.completion.chunk` SSE events → IR stream events.
///
/// The first chunk with choices or usage gives `Start`; `delta.content` (and `refusal`)
/// feed text blocks, `delta.reasoning_content` (or `reasoning`) and `thinking_blocks`
/// thinking blocks (signatures included), `delta.tool_calls[i]` tool-call blocks. Blocks
/// never interleave: the oldest unfinished block streams live and the others wait; a
/// tool call is known to be finished once its JSON arguments close, or at the end.
/// `finish_reason` stops what is open and gives `Finish`; the usage chunk gives `Usage`;
/// `data: [DONE]` gives `Done` (and [`Self::is_done`]). A chunk carrying `error` gives
/// `StreamEvent::Error`, after which nothing more is produced. Only choice 0 is translated.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    finished: bool,
    done: bool,
    failed: bool,
    queue: VecDeque<OpenBlock>,
    /// IR index of the next block to start.
    next_index: usize,
    /// IR index of the started head of `queue`.
    head_index: usize,
    /// Provider `index` of a tool call → our slot for it (the latest call with that index).
    wire_slots: Vec<(u32, u32)>,
    next_slot: u32,
    /// Slots (with their call ids) whose block is stopped; later fragments are ignored.
    closed: Vec<(u32, String)>,
    saw_tool: bool,
    usage: Option<Usage>,
    usage_sent: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ir::DecodeError> {
        let mut out = Vec::new();
        if self.done || self.failed {
            return Ok(out);
        }
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(out);
        }
        if data == "[DONE]" {
            self.end(&mut out);
            return Ok(out);
        }
        let chunk: InChunk = serde_json::from_str(data)
            .map_err(|e| ir::DecodeError(format!("provider sent an invalid chat.completion.chunk: {e}")))?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let (message, kind, code) = error_fields(&error);
            self.failed = true;
            out.push(StreamEvent::Error(error_info(
                kind.as_deref(),
                code.as_deref(),
                message,
                "the provider reported an error in the stream",
            )));
            return Ok(out);
        }
        let choices = chunk.choices.unwrap_or_default();
        if !self.started && (!choices.is_empty() || chunk.usage.is_some()) {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.id.unwrap_or_default(),
                model: chunk.model.unwrap_or_default(),
            });
        }
        let usage_only = choices.is_empty();
        let mut finished_now = false;
        for choice in choices {
            if choice.index.unwrap_or(0) != 0 || self.finished {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.apply_delta(delta, &mut out);
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.advance(true, &mut out);
                out.push(StreamEvent::Finish {
                    stop: stop_from_wire(&reason),
                });
                self.finished = true;
                finished_now = true;
            }
        }
        if let Some(usage) = chunk.usage {
            let usage = usage.to_ir();
            self.usage = Some(usage);
            if self.finished && !self.usage_sent && (usage_only || finished_now) {
                out.push(StreamEvent::Usage(usage));
                self.usage_sent = true;
            }
        }
        Ok(out)
    }

    /// `[DONE]`: closes whatever is open (with a `Finish` if the provider sent none), then
    /// pending usage, then `Done`.
    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.finished && self.started {
            self.advance(true, out);
            out.push(StreamEvent::Finish {
                stop: if self.saw_tool {
                    StopReason::ToolUse
                } else {
                    StopReason::EndTurn
                },
            });
            self.finished = true;
        }
        if let Some(usage) = self.usage.filter(|_| !self.usage_sent) {
            out.push(StreamEvent::Usage(usage));
            self.usage_sent = true;
        }
        self.done = true;
        out.push(StreamEvent::Done);
    }

    fn apply_delta(&mut self, delta: InDelta, out: &mut Vec<StreamEvent>) {
        let reasoning = delta
            .reasoning_content
            .or(delta.reasoning)
            .filter(|t| !t.is_empty());
        let had_reasoning = reasoning.is_some();
        if let Some(text) = reasoning {
            self.push_thinking(text);
        }
        for block in delta.thinking_blocks.unwrap_or_default() {
            match block.kind.as_str() {
                "thinking" => {
                    // With `reasoning_content` beside it, the block repeats the same text.
                    if !had_reasoning && let Some(text) = block.thinking.filter(|t| !t.is_empty()) {
                        self.push_thinking(text);
                    }
                    if let Some(signature) = block.signature.filter(|s| !s.is_empty()) {
                        self.push_signature(signature);
                    }
                }
                "redacted_thinking" => self.queue.push_back(OpenBlock::new(Pending::Redacted {
                    data: block.data.unwrap_or_default(),
                })),
                _ => {}
            }
        }
        for text in [delta.content, delta.refusal].into_iter().flatten() {
            if !text.is_empty() {
                self.push_text(text);
            }
        }
        for call in delta.tool_calls.unwrap_or_default() {
            self.push_tool(call);
        }
        self.advance(false, out);
    }

    /// Text and thinking always extend the last block of the queue, or start a new one.
    fn push_text(&mut self, text: String) {
        if !matches!(
            self.queue.back(),
            Some(OpenBlock {
                kind: Pending::Text,
                ..
            })
        ) {
            self.queue.push_back(OpenBlock::new(Pending::Text));
        }
        self.push_back_delta(Delta::Text(text));
    }

    fn push_thinking(&mut self, text: String) {
        if !matches!(
            self.queue.back(),
            Some(OpenBlock {
                kind: Pending::Thinking { signed: false },
                ..
            })
        ) {
            self.queue
                .push_back(OpenBlock::new(Pending::Thinking { signed: false }));
        }
        self.push_back_delta(Delta::Thinking(text));
    }

    fn push_signature(&mut self, signature: String) {
        match self.queue.back_mut() {
            Some(OpenBlock {
                kind: Pending::Thinking { signed },
                ..
            }) if !*signed => *signed = true,
            _ => self
                .queue
                .push_back(OpenBlock::new(Pending::Thinking { signed: true })),
        }
        self.push_back_delta(Delta::Signature(signature));
    }

    /// Queues a delta on the last block; [`Self::advance`] emits it when that block is the head.
    fn push_back_delta(&mut self, delta: Delta) {
        if let Some(block) = self.queue.back_mut() {
            block.deltas.push(delta);
        }
    }

    fn push_tool(&mut self, call: InToolCall) {
        self.saw_tool = true;
        let function = call.function.unwrap_or(InFunction {
            name: None,
            arguments: None,
        });
        let id = call.id.filter(|s| !s.is_empty());
        let name = function.name.filter(|s| !s.is_empty());
        let arguments = match function.arguments {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => String::new(),
            Some(other) => other.to_string(),
        };
        let slot = self.slot_for(call.index, id.as_deref());
        if self.closed.iter().any(|(s, _)| *s == slot) {
            // Its arguments already closed: only whitespace can validly follow.
            return;
        }
        let pos = self
            .queue
            .iter()
            .position(|b| matches!(&b.kind, Pending::Tool { slot: s, .. } if *s == slot));
        let pos = match pos {
            Some(pos) => pos,
            None => {
                self.queue.push_back(OpenBlock::new(Pending::Tool {
                    slot,
                    id: String::new(),
                    name: String::new(),
                    args: JsonEnd::default(),
                }));
                self.queue.len() - 1
            }
        };
        let Some(block) = self.queue.get_mut(pos) else {
            return;
        };
        if let Pending::Tool {
            id: bid,
            name: bname,
            args,
            ..
        } = &mut block.kind
        {
            if !block.started {
                if bid.is_empty()
                    && let Some(id) = id
                {
                    *bid = id;
                }
                if bname.is_empty()
                    && let Some(name) = name
                {
                    *bname = name;
                }
            }
            if !arguments.is_empty() {
                args.feed(&arguments);
                block.deltas.push(Delta::ToolArguments(arguments));
            }
        }
    }

    /// The id known so far for the call in `slot`, open or closed.
    fn slot_id(&self, slot: u32) -> Option<&str> {
        let open = self.queue.iter().find_map(|b| match &b.kind {
            Pending::Tool { slot: s, id, .. } if *s == slot => Some(id.as_str()),
            _ => None,
        });
        open.or_else(|| {
            self.closed
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, id)| id.as_str())
        })
    }

    /// The call a fragment belongs to. Fragments are matched by `index`, but a fragment
    /// bringing a new id under a known index starts a new call (some providers number every
    /// call 0); without `index`, a fragment goes to the call with its id, or the latest call.
    fn slot_for(&mut self, wire: Option<u32>, id: Option<&str>) -> u32 {
        let mapped = match wire {
            Some(w) => self
                .wire_slots
                .iter()
                .find(|(x, _)| *x == w)
                .map(|(_, slot)| *slot),
            None => match id {
                Some(id) => (0..self.next_slot).find(|&slot| self.slot_id(slot) == Some(id)),
                None => self.next_slot.checked_sub(1),
            },
        };
        if let Some(slot) = mapped {
            let renamed =
                matches!((id, self.slot_id(slot)), (Some(new), Some(old)) if !old.is_empty() && new != old);
            if !renamed {
                return slot;
            }
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        if let Some(w) = wire {
            self.wire_slots.retain(|(x, _)| *x != w);
            self.wire_slots.push((w, slot));
        }
        slot
    }

    /// Emits what the queue allows: starts the head when ready, flushes its buffered
    /// deltas, and stops it once it is complete and a later block waits. With `force`,
    /// everything is started and stopped in order (the answer is over).
    fn advance(&mut self, force: bool, out: &mut Vec<StreamEvent>) {
        loop {
            let waiting = self.queue.len() > 1;
            let Some(head) = self.queue.front_mut() else {
                return;
            };
            if !head.started {
                if !force && !head.ready() {
                    return;
                }
                self.head_index = self.next_index;
                self.next_index += 1;
                head.started = true;
                out.push(StreamEvent::BlockStart {
                    index: self.head_index,
                    kind: head.block_kind(),
                });
            }
            for delta in head.deltas.drain(..) {
                out.push(StreamEvent::Delta {
                    index: self.head_index,
                    delta,
                });
            }
            if !(force || (waiting && head.complete())) {
                return;
            }
            out.push(StreamEvent::BlockStop {
                index: self.head_index,
            });
            if let Some(OpenBlock {
                kind: Pending::Tool { slot, id, .. },
                ..
            }) = self.queue.pop_front()
            {
                self.closed.push((slot, id));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Streams: encoding
// ---------------------------------------------------------------------------------------

#[derive(Serialize)]
struct OutChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<OutChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OutUsage>,
}

#[derive(Serialize)]
struct OutChunkChoice<'a> {
    index: u32,
    delta: OutDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct OutDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<OutThinkingBlock<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutChunkToolCall<'a>>,
}

#[derive(Serialize)]
struct OutChunkToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: OutChunkFunction<'a>,
}

#[derive(Serialize)]
struct OutChunkFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// IR stream events → OpenAI `chat.completion.chunk` SSE, ending with `data: [DONE]`.
///
/// `Start` sends the `role: "assistant"` chunk; each delta is one chunk (text as
/// `content`, thinking as `reasoning_content`, signatures and redacted blocks as
/// `thinking_blocks`, tool calls as `tool_calls[k]` where `k` counts tool-call blocks);
/// `Finish` sends `finish_reason`; `Usage` sends the usage chunk (`choices: []`) only when
/// the caller asked for it, after the finish chunk; `Error` sends `data: {"error":{…}}` and
/// no `[DONE]`. Every chunk carries the same `id`, `created` and `model`.
#[derive(Debug)]
pub struct StreamEncoder {
    include_usage: bool,
    id: String,
    model: String,
    created: i64,
    /// IR block index → tool-call ordinal.
    tools: Vec<(usize, usize)>,
    finished: bool,
    pending_usage: Option<Usage>,
    closed: bool,
}

impl StreamEncoder {
    pub fn new(include_usage: bool) -> Self {
        StreamEncoder {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            tools: Vec::new(),
            finished: false,
            pending_usage: None,
            closed: false,
        }
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.delta_chunk(
                    OutDelta {
                        role: Some("assistant"),
                        content: Some(""),
                        ..OutDelta::default()
                    },
                    out,
                );
            }
            StreamEvent::BlockStart { index, kind } => match kind {
                BlockKind::ToolCall { id, name } => {
                    let k = self.tools.len();
                    self.tools.push((*index, k));
                    self.delta_chunk(
                        OutDelta {
                            tool_calls: vec![OutChunkToolCall {
                                index: k,
                                id: Some(id),
                                kind: Some("function"),
                                function: OutChunkFunction {
                                    name: Some(name),
                                    arguments: "",
                                },
                            }],
                            ..OutDelta::default()
                        },
                        out,
                    );
                }
                BlockKind::RedactedThinking { data } => self.delta_chunk(
                    OutDelta {
                        thinking_blocks: vec![OutThinkingBlock::RedactedThinking { data }],
                        ..OutDelta::default()
                    },
                    out,
                ),
                BlockKind::Text | BlockKind::Thinking => {}
            },
            StreamEvent::Delta { index, delta } => {
                let delta = match delta {
                    Delta::Text(text) => OutDelta {
                        content: Some(text),
                        ..OutDelta::default()
                    },
                    Delta::Thinking(text) => OutDelta {
                        reasoning_content: Some(text),
                        ..OutDelta::default()
                    },
                    Delta::Signature(signature) => OutDelta {
                        thinking_blocks: vec![OutThinkingBlock::Thinking {
                            thinking: "",
                            signature: Some(signature),
                        }],
                        ..OutDelta::default()
                    },
                    Delta::ToolArguments(arguments) => {
                        let Some(&(_, k)) = self.tools.iter().find(|(i, _)| i == index) else {
                            return;
                        };
                        OutDelta {
                            tool_calls: vec![OutChunkToolCall {
                                index: k,
                                id: None,
                                kind: None,
                                function: OutChunkFunction {
                                    name: None,
                                    arguments,
                                },
                            }],
                            ..OutDelta::default()
                        }
                    }
                };
                self.delta_chunk(delta, out);
            }
            StreamEvent::BlockStop { .. } => {}
            StreamEvent::Finish { stop } => {
                let chunk = OutChunk {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: vec![OutChunkChoice {
                        index: 0,
                        delta: OutDelta::default(),
                        logprobs: None,
                        finish_reason: Some(stop_to_wire(stop).0),
                    }],
                    usage: None,
                };
                write_json(&chunk, out);
                self.finished = true;
                if let Some(usage) = self.pending_usage.take() {
                    self.usage_chunk(&usage, out);
                }
            }
            StreamEvent::Usage(usage) if self.include_usage => {
                if self.finished {
                    self.usage_chunk(usage, out);
                } else {
                    self.pending_usage = Some(*usage);
                }
            }
            StreamEvent::Usage(_) => {}
            StreamEvent::Error(err) => {
                let (kind, code) = openai_type_code(err.kind);
                super::error_event(&err.message, kind, code, out);
                self.closed = true;
            }
            StreamEvent::Done => {
                if let Some(usage) = self.pending_usage.take() {
                    self.usage_chunk(&usage, out);
                }
                write_event(out, None, "[DONE]");
                self.closed = true;
            }
        }
    }

    fn delta_chunk(&self, delta: OutDelta<'_>, out: &mut BytesMut) {
        let chunk = OutChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![OutChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        write_json(&chunk, out);
    }

    fn usage_chunk(&self, usage: &Usage, out: &mut BytesMut) {
        let chunk = OutChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: Vec::new(),
            usage: Some(OutUsage::from(usage)),
        };
        write_json(&chunk, out);
    }
}

/// Writes one `data:` event holding `value` as JSON (which never contains a raw newline).
fn write_json<T: Serialize>(value: &T, out: &mut BytesMut) {
    if let Ok(json) = serde_json::to_vec(value) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\n\n");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::formats::sse::{SseFramer, parse_events};

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

    fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn result(call_id: &str, content: &str) -> Part {
        Part::ToolResult {
            call_id: call_id.into(),
            content: vec![text(content)],
            is_error: false,
            cache_control: None,
        }
    }

    fn sys(t: &str) -> SystemBlock {
        SystemBlock {
            text: t.into(),
            cache_control: None,
        }
    }

    fn ephemeral() -> Option<Value> {
        Some(json!({"type": "ephemeral"}))
    }

    fn decode(body: Value) -> ChatRequest {
        decode_request(body.to_string().as_bytes()).unwrap()
    }

    fn base(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "gpt-4o".into(),
            messages,
            ..ChatRequest::default()
        }
    }

    fn hi() -> Value {
        json!([{"role": "user", "content": "hi"}])
    }

    fn weather_tool() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            cache_control: None,
        }
    }

    #[test]
    fn decodes_every_kind_of_message() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [
                    {"type": "text", "text": "Cite sources."},
                    {"type": "text", "text": "Long policy", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris and the time?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "auto"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"Europe/Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "14:05"}]},
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": null, "refusal": null, "audio": null, "tool_calls": [
                    {"id": "call_c", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_c", "content": "14:06"}
            ]
        });
        let mut dropped = ir::Dropped::default();
        let got = decode_request_reporting(body.to_string().as_bytes(), &mut dropped).unwrap();
        let want = ChatRequest {
            system: vec![
                sys("Be brief."),
                sys("Cite sources."),
                SystemBlock {
                    text: "Long policy".into(),
                    cache_control: ephemeral(),
                },
            ],
            ..base(vec![
                user(vec![
                    text("Weather in Paris and the time?"),
                    Part::Image {
                        source: ImageSource::Url("https://example.com/a.png".into()),
                        cache_control: None,
                    },
                    Part::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBORw0KGgo=".into(),
                        },
                        cache_control: None,
                    },
                ]),
                assistant(vec![
                    text("Checking."),
                    call("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                    call("call_b", "get_time", "{\"tz\":\"Europe/Paris\"}"),
                ]),
                user(vec![result("call_a", "18C"), result("call_b", "14:05")]),
                user(vec![text("thanks")]),
                assistant(vec![call("call_c", "get_time", "{}")]),
                user(vec![result("call_c", "14:06")]),
            ])
        };
        assert_eq!(got, want);
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    #[test]
    fn decodes_thinking_blocks_and_cache_control() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "Rules", "cache_control": {"type": "ephemeral"}},
                {"role": "user", "content": "q", "cache_control": {"type": "ephemeral"}},
                {"role": "assistant", "content": "A", "reasoning_content": "ignored: blocks win",
                 "thinking_blocks": [
                    {"type": "thinking", "thinking": "step 1", "signature": "sig=="},
                    {"type": "redacted_thinking", "data": "opaque"}
                 ]},
                {"role": "assistant", "content": "B", "reasoning_content": "plain reasoning"},
                {"role": "tool", "tool_call_id": "c1", "content": [
                    {"type": "text", "text": "r", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "tool", "tool_call_id": "c2", "content": "r2", "cache_control": {"type": "ephemeral"}}
            ]
        });
        let got = decode(body);
        assert_eq!(
            got.system,
            vec![SystemBlock {
                text: "Rules".into(),
                cache_control: ephemeral()
            }]
        );
        assert_eq!(
            got.messages,
            vec![
                user(vec![Part::Text {
                    text: "q".into(),
                    cache_control: ephemeral()
                }]),
                assistant(vec![
                    Part::Thinking {
                        text: "step 1".into(),
                        signature: Some("sig==".into())
                    },
                    Part::RedactedThinking {
                        data: "opaque".into()
                    },
                    text("A"),
                ]),
                assistant(vec![
                    Part::Thinking {
                        text: "plain reasoning".into(),
                        signature: None
                    },
                    text("B"),
                ]),
                user(vec![
                    Part::ToolResult {
                        call_id: "c1".into(),
                        content: vec![Part::Text {
                            text: "r".into(),
                            cache_control: ephemeral()
                        }],
                        is_error: false,
                        cache_control: None,
                    },
                    Part::ToolResult {
                        call_id: "c2".into(),
                        content: vec![text("r2")],
                        is_error: false,
                        cache_control: ephemeral(),
                    },
                ]),
            ]
        );
    }

    #[test]
    fn decodes_request_parameters() {
        let with = |extra: Value| {
            let mut body = json!({"model": "gpt-4o", "messages": hi()});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            decode(body)
        };
        let plain = || base(vec![user(vec![text("hi")])]);
        let cases: Vec<(Value, ChatRequest)> = vec![
            (json!({}), plain()),
            (
                json!({"max_completion_tokens": 100, "max_tokens": 50}),
                ChatRequest {
                    max_tokens: Some(100),
                    ..plain()
                },
            ),
            (
                json!({"max_tokens": 50}),
                ChatRequest {
                    max_tokens: Some(50),
                    ..plain()
                },
            ),
            (
                json!({"temperature": 0.2, "top_p": 0.9, "user": "u-1", "reasoning_effort": "high"}),
                ChatRequest {
                    temperature: Some(0.2),
                    top_p: Some(0.9),
                    user: Some("u-1".into()),
                    reasoning_effort: Some("high".into()),
                    ..plain()
                },
            ),
            (json!({"temperature": null, "stop": null}), plain()),
            (
                json!({"stop": "END"}),
                ChatRequest {
                    stop: vec!["END".into()],
                    ..plain()
                },
            ),
            (
                json!({"stop": ["a", "b"]}),
                ChatRequest {
                    stop: vec!["a".into(), "b".into()],
                    ..plain()
                },
            ),
            (
                json!({"stream": true, "stream_options": {"include_usage": true}}),
                ChatRequest {
                    stream: true,
                    include_usage: true,
                    ..plain()
                },
            ),
            (
                json!({"stream": true}),
                ChatRequest {
                    stream: true,
                    ..plain()
                },
            ),
            (
                json!({"tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                        "strict": true}},
                    {"type": "function", "function": {"name": "now"}, "cache_control": {"type": "ephemeral"}}
                ], "parallel_tool_calls": false, "tool_choice": "required"}),
                ChatRequest {
                    tools: vec![
                        weather_tool(),
                        Tool {
                            name: "now".into(),
                            description: None,
                            parameters: json!({"type": "object", "properties": {}}),
                            cache_control: ephemeral(),
                        },
                    ],
                    parallel_tool_calls: Some(false),
                    tool_choice: Some(ToolChoice::Required),
                    ..plain()
                },
            ),
            (
                json!({"tool_choice": "auto"}),
                ChatRequest {
                    tool_choice: Some(ToolChoice::Auto),
                    ..plain()
                },
            ),
            (
                json!({"tool_choice": "none"}),
                ChatRequest {
                    tool_choice: Some(ToolChoice::None),
                    ..plain()
                },
            ),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
                ChatRequest {
                    tool_choice: Some(ToolChoice::Tool("get_weather".into())),
                    ..plain()
                },
            ),
            (
                json!({"response_format": {"type": "text"}}),
                ChatRequest {
                    response_format: Some(ResponseFormat::Text),
                    ..plain()
                },
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                ChatRequest {
                    response_format: Some(ResponseFormat::JsonObject),
                    ..plain()
                },
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {
                    "name": "answer", "strict": true, "schema": {"type": "object"}}}}),
                ChatRequest {
                    response_format: Some(ResponseFormat::JsonSchema {
                        name: "answer".into(),
                        schema: json!({"type": "object"}),
                        strict: Some(true),
                    }),
                    ..plain()
                },
            ),
            (
                json!({"seed": 7, "n": 2, "logit_bias": {"50256": -100}, "metadata": {"k": "v"}, "x_custom": [1]}),
                ChatRequest {
                    // serde_json's map is sorted, so the body's order is alphabetical here.
                    extra: vec![
                        ("logit_bias".into(), json!({"50256": -100})),
                        ("metadata".into(), json!({"k": "v"})),
                        ("n".into(), json!(2)),
                        ("seed".into(), json!(7)),
                        ("x_custom".into(), json!([1])),
                    ],
                    ..plain()
                },
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(with(extra.clone()), want, "{extra}");
        }
    }

    #[test]
    fn extra_fields_keep_request_order_and_raw_values() {
        let body = br#"{"seed":1,"model":"m","presence_penalty":0.5,"messages":[{"role":"user","content":"x"}],"frequency_penalty":-1e0,"logprobs":true}"#;
        let got = decode_request(body).unwrap();
        let keys: Vec<&str> = got.extra.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["seed", "presence_penalty", "frequency_penalty", "logprobs"]
        );
        assert_eq!(got.extra[2].1, json!(-1.0));
    }

    #[test]
    fn reports_message_details_the_ir_cannot_hold() {
        let cases: Vec<(Value, &[&str])> = vec![
            (
                json!([{"role": "user", "content": "x", "name": "alice"}]),
                &["message_name"],
            ),
            (
                json!([{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]}]),
                &["image_detail"],
            ),
            (
                json!([{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}]}]),
                &[],
            ),
            (
                json!([{"role": "assistant", "content": "x", "audio": null, "annotations": [], "function_call": null}]),
                &[],
            ),
            (
                json!([{"role": "assistant", "content": "x", "audio": {"id": "audio_1"}}]),
                &["message_audio"],
            ),
        ];
        for (messages, want) in cases {
            let mut dropped = ir::Dropped::default();
            let body = json!({"model": "m", "messages": messages});
            decode_request_reporting(body.to_string().as_bytes(), &mut dropped).unwrap();
            let names: Vec<&str> = dropped.names().iter().map(String::as_str).collect();
            assert_eq!(names, *want, "{messages}");
        }
    }

    #[test]
    fn refuses_invalid_requests_naming_the_param() {
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!({"model": "m"}), Some("messages"), "must provide a messages"),
            (
                json!({"model": "m", "messages": "hi"}),
                Some("messages"),
                "must be an array",
            ),
            (
                json!({"model": "m", "messages": null}),
                Some("messages"),
                "must be an array",
            ),
            (json!({"messages": hi()}), Some("model"), "model"),
            (
                json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
                Some("messages"),
                "unknown role `robot`",
            ),
            (
                json!({"model": "m", "messages": [{"role": "function", "name": "f", "content": "x"}]}),
                Some("messages"),
                "deprecated function calling",
            ),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                Some("messages"),
                "messages[0]",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                Some("messages"),
                "messages[0].content is required",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                Some("messages"),
                "string or an array",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}),
                Some("messages"),
                "messages[0].content[0]: unknown content part type `video`",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                Some("messages"),
                "`input_audio` cannot be translated",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                Some("messages"),
                "need `text`",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]}]}),
                Some("messages"),
                "base64",
            ),
            (
                json!({"model": "m", "messages": [{"role": "system", "content": [
                    {"type": "image_url", "image_url": {"url": "https://x"}}]}]}),
                Some("messages"),
                "only text",
            ),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                Some("messages"),
                "tool_call_id",
            ),
            (
                json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "function": {"name": "f"}}]}]}),
                Some("messages"),
                "only function tool calls",
            ),
            (
                json!({"model": "m", "messages": hi(), "temperature": "hot"}),
                Some("temperature"),
                "invalid `temperature`",
            ),
            (
                json!({"model": "m", "messages": hi(), "max_tokens": -1}),
                Some("max_tokens"),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": hi(), "stop": [1]}),
                Some("stop"),
                "stop",
            ),
            (
                json!({"model": "m", "messages": hi(), "stream": "yes"}),
                Some("stream"),
                "stream",
            ),
            (
                json!({"model": "m", "messages": hi(), "tool_choice": "always"}),
                Some("tool_choice"),
                "tool_choice",
            ),
            (
                json!({"model": "m", "messages": hi(), "tools": [{"type": "custom", "custom": {"name": "x"}}]}),
                Some("tools"),
                "tool type `custom`",
            ),
            (
                json!({"model": "m", "messages": hi(), "response_format": {"type": "xml"}}),
                Some("response_format"),
                "response_format",
            ),
        ];
        for (body, param, want) in cases {
            let err = decode_request(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.param, param, "{body}: {err:?}");
            assert!(err.message.contains(want), "{body}: {err:?}");
        }
        assert!(
            decode_request(br#"{"model":"m","model":"n","messages":[]}"#)
                .unwrap_err()
                .message
                .contains("duplicate key")
        );
    }

    fn encode(req: &ChatRequest) -> (Value, Vec<String>) {
        let mut dropped = ir::Dropped::default();
        let body = encode_request(req, "gpt-4o-mini", &mut dropped);
        (serde_json::from_slice(&body).unwrap(), dropped.names().to_vec())
    }

    #[test]
    fn encodes_requests() {
        let req = ChatRequest {
            model: "alias".into(),
            system: vec![sys("Be brief.")],
            messages: vec![
                user(vec![
                    text("Look"),
                    Part::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/jpeg".into(),
                            data: "/9j/4A==".into(),
                        },
                        cache_control: None,
                    },
                    Part::Image {
                        source: ImageSource::Url("https://example.com/b.png".into()),
                        cache_control: None,
                    },
                ]),
                assistant(vec![
                    call("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                    call("call_b", "now", "{}"),
                ]),
                user(vec![
                    result("call_a", "18C"),
                    result("call_b", "14:05"),
                    text("and tomorrow?"),
                ]),
                assistant(vec![text("Sunny.")]),
            ],
            tools: vec![weather_tool()],
            tool_choice: Some(ToolChoice::Tool("get_weather".into())),
            parallel_tool_calls: Some(true),
            max_tokens: Some(256),
            temperature: Some(0.5),
            top_p: Some(1.0),
            stop: vec!["END".into()],
            response_format: Some(ResponseFormat::JsonSchema {
                name: "a".into(),
                schema: json!({"type": "object"}),
                strict: Some(true),
            }),
            reasoning_effort: Some("low".into()),
            user: Some("u-1".into()),
            ..ChatRequest::default()
        };
        let (got, dropped) = encode(&req);
        assert_eq!(
            got,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Look"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4A=="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
                    {"role": "tool", "tool_call_id": "call_b", "content": "14:05"},
                    {"role": "user", "content": "and tomorrow?"},
                    {"role": "assistant", "content": "Sunny."}
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather", "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": true,
                "max_completion_tokens": 256,
                "temperature": 0.5,
                "top_p": 1.0,
                "stop": ["END"],
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": true}},
                "reasoning_effort": "low",
                "user": "u-1"
            })
        );
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    #[test]
    fn streamed_requests_always_ask_for_usage() {
        for include_usage in [false, true] {
            let req = ChatRequest {
                stream: true,
                include_usage,
                ..base(vec![user(vec![text("hi")])])
            };
            let (got, _) = encode(&req);
            assert_eq!(got["stream"], json!(true));
            assert_eq!(got["stream_options"], json!({"include_usage": true}));
        }
        let (got, _) = encode(&base(vec![user(vec![text("hi")])]));
        assert!(
            got.get("stream").is_none() && got.get("stream_options").is_none(),
            "{got}"
        );
    }

    #[test]
    fn records_what_openai_cannot_express() {
        let thinking_history = assistant(vec![
            Part::Thinking {
                text: "hidden".into(),
                signature: Some("s".into()),
            },
            text("answer"),
        ]);
        let cases: Vec<(ChatRequest, &[&str])> = vec![
            (
                ChatRequest {
                    top_k: Some(40),
                    ..base(vec![])
                },
                &["top_k"],
            ),
            (
                ChatRequest {
                    thinking: Some(ir::Thinking {
                        budget_tokens: Some(2048),
                    }),
                    ..base(vec![])
                },
                &["thinking"],
            ),
            (base(vec![thinking_history]), &["thinking"]),
            (
                base(vec![assistant(vec![
                    Part::RedactedThinking { data: "x".into() },
                    text("a"),
                ])]),
                &["redacted_thinking"],
            ),
            (
                ChatRequest {
                    system: vec![SystemBlock {
                        text: "s".into(),
                        cache_control: ephemeral(),
                    }],
                    ..base(vec![])
                },
                &["cache_control"],
            ),
            (
                base(vec![user(vec![Part::Text {
                    text: "t".into(),
                    cache_control: ephemeral(),
                }])]),
                &["cache_control"],
            ),
            (
                ChatRequest {
                    tools: vec![Tool {
                        cache_control: ephemeral(),
                        ..weather_tool()
                    }],
                    ..base(vec![])
                },
                &["cache_control"],
            ),
            (
                base(vec![user(vec![Part::ToolResult {
                    call_id: "c".into(),
                    content: vec![
                        text("failed"),
                        Part::Image {
                            source: ImageSource::Url("https://x/y.png".into()),
                            cache_control: None,
                        },
                    ],
                    is_error: true,
                    cache_control: ephemeral(),
                }])]),
                &["tool_result_is_error", "cache_control", "tool_result_image"],
            ),
            (
                ChatRequest {
                    extra: vec![
                        ("seed".into(), json!(1)),
                        ("service_tier".into(), json!("flex")),
                        ("container".into(), json!("c")),
                        ("safetySettings".into(), json!([])),
                    ],
                    ..base(vec![])
                },
                &["container", "safetySettings"],
            ),
            (
                ChatRequest {
                    extra: vec![("service_tier".into(), json!("standard_only"))],
                    ..base(vec![])
                },
                &["service_tier"],
            ),
        ];
        for (req, want) in cases {
            let (got, dropped) = encode(&req);
            assert_eq!(dropped, *want, "{got}");
            let text = got.to_string();
            assert!(
                !text.contains("cache_control") && !text.contains("top_k"),
                "{text}"
            );
            assert!(!text.contains("thinking") && !text.contains("hidden"), "{text}");
        }
        let req = ChatRequest {
            extra: vec![("seed".into(), json!(1)), ("service_tier".into(), json!("flex"))],
            ..base(vec![])
        };
        let (got, _) = encode(&req);
        assert_eq!((&got["seed"], &got["service_tier"]), (&json!(1), &json!("flex")));
    }

    #[test]
    fn requests_round_trip() {
        let full = ChatRequest {
            model: "gpt-4o-mini".into(),
            system: vec![sys("one"), sys("two")],
            messages: vec![
                user(vec![
                    text("see"),
                    Part::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/png".into(),
                            data: "AAAA".into(),
                        },
                        cache_control: None,
                    },
                ]),
                assistant(vec![text("a"), text("b"), call("c1", "f", "{\"x\":1}")]),
                user(vec![
                    result("c1", "done"),
                    Part::ToolResult {
                        call_id: "c2".into(),
                        content: vec![text("p1"), text("p2")],
                        is_error: false,
                        cache_control: None,
                    },
                    Part::ToolResult {
                        call_id: "c3".into(),
                        content: vec![],
                        is_error: false,
                        cache_control: None,
                    },
                ]),
                user(vec![text("more")]),
                assistant(vec![call("c4", "g", "")]),
            ],
            tools: vec![weather_tool()],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(false),
            max_tokens: Some(10),
            temperature: Some(0.0),
            top_p: Some(0.5),
            stop: vec!["x".into(), "y".into()],
            stream: true,
            include_usage: true,
            response_format: Some(ResponseFormat::JsonObject),
            reasoning_effort: Some("medium".into()),
            user: Some("me".into()),
            extra: vec![("n".into(), json!(1)), ("seed".into(), json!(3))],
            ..ChatRequest::default()
        };
        let cases = vec![
            full.clone(),
            base(vec![user(vec![text("hi")])]),
            ChatRequest {
                model: "gpt-4o-mini".into(),
                tool_choice: Some(ToolChoice::Tool("get_weather".into())),
                response_format: Some(ResponseFormat::JsonSchema {
                    name: "s".into(),
                    schema: json!({"type": "object", "properties": {}}),
                    strict: None,
                }),
                ..base(vec![])
            },
        ];
        for want in cases {
            let want = ChatRequest {
                model: "gpt-4o-mini".into(),
                ..want
            };
            let mut dropped = ir::Dropped::default();
            let body = encode_request(&want, "gpt-4o-mini", &mut dropped);
            assert!(dropped.is_empty(), "{dropped:?}");
            assert_eq!(
                decode_request(&body).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    fn response(parts: Vec<Part>, stop: StopReason) -> ChatResponse {
        ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4o-2024-08-06".into(),
            parts,
            stop,
            usage: Usage {
                input_tokens: 120,
                output_tokens: 30,
                cached_input_tokens: 100,
                cache_creation_tokens: 0,
                reasoning_tokens: 12,
            },
            created: Some(1_741_000_000),
        }
    }

    #[test]
    fn decodes_responses() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_741_000_000, "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Let me check.", "refusal": null,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}}
                ]}, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0}},
            "system_fingerprint": "fp_1"
        });
        let got = decode_response(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            got,
            response(
                vec![
                    text("Let me check."),
                    call("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                    call("call_b", "now", "{}"),
                ],
                StopReason::ToolUse
            )
        );

        let reasoning = json!({"id": "x", "model": "deepseek-reasoner", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "42", "reasoning_content": "think"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_cache_hit_tokens": 8}});
        let got = decode_response(reasoning.to_string().as_bytes()).unwrap();
        assert_eq!(
            got.parts,
            vec![
                Part::Thinking {
                    text: "think".into(),
                    signature: None
                },
                text("42")
            ]
        );
        assert_eq!(got.usage.cached_input_tokens, 8);
        assert_eq!(got.created, None);

        let second_choice_only = json!({"choices": [{"index": 1, "message": {"content": "b"}}]});
        assert!(decode_response(second_choice_only.to_string().as_bytes()).is_err());
        let error = json!({"error": {"message": "quota", "type": "insufficient_quota"}});
        let err = decode_response(error.to_string().as_bytes()).unwrap_err();
        assert!(err.0.contains("quota"), "{err}");
        assert!(decode_response(b"<html>").is_err());
    }

    #[test]
    fn encodes_responses() {
        let resp = response(
            vec![
                Part::Thinking {
                    text: "step".into(),
                    signature: Some("sig".into()),
                },
                Part::RedactedThinking {
                    data: "opaque".into(),
                },
                text("It is "),
                text("sunny."),
                call("toolu_1", "get_weather", "{\"city\":\"Paris\"}"),
            ],
            StopReason::ToolUse,
        );
        let mut dropped = ir::Dropped::default();
        let got: Value = serde_json::from_slice(&encode_response(&resp, &mut dropped)).unwrap();
        assert_eq!(
            got,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_741_000_000, "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "message": {
                    "role": "assistant",
                    "content": "It is sunny.",
                    "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
                    "reasoning_content": "step",
                    "thinking_blocks": [
                        {"type": "thinking", "thinking": "step", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "opaque"}
                    ]
                }, "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                    "prompt_tokens_details": {"cached_tokens": 100},
                    "completion_tokens_details": {"reasoning_tokens": 12}}
            })
        );
        assert!(dropped.is_empty());

        let only_calls = response(vec![call("c", "f", "{}")], StopReason::ToolUse);
        let got: Value = serde_json::from_slice(&encode_response(&only_calls, &mut dropped)).unwrap();
        assert_eq!(got["choices"][0]["message"]["content"], Value::Null);
        let empty = response(vec![], StopReason::MaxTokens);
        let got: Value = serde_json::from_slice(&encode_response(&empty, &mut dropped)).unwrap();
        assert_eq!(got["choices"][0]["message"]["content"], json!(""));
        assert!(got["choices"][0]["message"].get("thinking_blocks").is_none());

        let mut dropped = ir::Dropped::default();
        let odd = response(
            vec![Part::Image {
                source: ImageSource::Url("https://x".into()),
                cache_control: None,
            }],
            StopReason::Other("pause_turn".into()),
        );
        let got: Value = serde_json::from_slice(&encode_response(&odd, &mut dropped)).unwrap();
        assert_eq!(got["choices"][0]["finish_reason"], "stop");
        assert_eq!(dropped.names(), ["image_output", "stop_reason"]);
    }

    #[test]
    fn responses_round_trip_and_thinking_survives_a_caller_round_trip() {
        let cases = vec![
            response(vec![text("hello")], StopReason::EndTurn),
            response(vec![], StopReason::MaxTokens),
            response(
                vec![text("x"), call("c1", "f", "{\"a\":[1,2]}"), call("c2", "g", "{}")],
                StopReason::ToolUse,
            ),
            response(vec![call("c1", "f", "{}")], StopReason::ToolUse),
            response(vec![text("no")], StopReason::ContentFilter),
            response(
                vec![
                    Part::Thinking {
                        text: "a".into(),
                        signature: Some("s1".into()),
                    },
                    Part::Thinking {
                        text: "b".into(),
                        signature: None,
                    },
                    Part::RedactedThinking { data: "r".into() },
                    text("done"),
                ],
                StopReason::EndTurn,
            ),
        ];
        for want in cases {
            let mut dropped = ir::Dropped::default();
            let body = encode_response(&want, &mut dropped);
            assert!(dropped.is_empty());
            assert_eq!(
                decode_response(&body).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(&body)
            );

            // The caller sends the assistant turn back: parts come back unchanged.
            let message: Value =
                serde_json::from_slice::<Value>(&body).unwrap()["choices"][0]["message"].clone();
            let req = json!({"model": "m", "messages": [{"role": "user", "content": "q"}, message]});
            let got = decode(req);
            assert_eq!(got.messages[1], assistant(want.parts.clone()));
        }
    }

    #[test]
    fn usage_maps_both_ways() {
        let wire = json!({"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 800}, "completion_tokens_details": {"reasoning_tokens": 150}});
        let usage = serde_json::from_value::<WireUsage>(wire).unwrap().to_ir();
        let want = Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cached_input_tokens: 800,
            cache_creation_tokens: 0,
            reasoning_tokens: 150,
        };
        assert_eq!(usage, want);
        let back = serde_json::to_value(OutUsage::from(&Usage {
            cache_creation_tokens: 50,
            ..want
        }))
        .unwrap();
        assert_eq!(
            back,
            json!({"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                "prompt_tokens_details": {"cached_tokens": 800}, "completion_tokens_details": {"reasoning_tokens": 150}})
        );
        let sparse = serde_json::from_value::<WireUsage>(
            json!({"prompt_tokens": 3, "completion_tokens_details": null}),
        );
        assert_eq!(
            sparse.unwrap().to_ir(),
            Usage {
                input_tokens: 3,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn finish_reasons_map_both_ways() {
        let decoded = [
            ("stop", StopReason::EndTurn),
            ("length", StopReason::MaxTokens),
            ("tool_calls", StopReason::ToolUse),
            ("function_call", StopReason::ToolUse),
            ("content_filter", StopReason::ContentFilter),
            ("abort", StopReason::Other("abort".into())),
        ];
        for (wire, want) in decoded {
            assert_eq!(stop_from_wire(wire), want, "{wire}");
        }
        let encoded = [
            (StopReason::EndTurn, "stop", false),
            (StopReason::StopSequence(Some("END".into())), "stop", false),
            (StopReason::StopSequence(None), "stop", false),
            (StopReason::MaxTokens, "length", false),
            (StopReason::ToolUse, "tool_calls", false),
            (StopReason::ContentFilter, "content_filter", false),
            (StopReason::Other("refusal".into()), "content_filter", false),
            (StopReason::Other("pause_turn".into()), "stop", true),
        ];
        for (stop, wire, lossy) in encoded {
            assert_eq!(stop_to_wire(&stop), (wire, lossy), "{stop:?}");
        }
    }

    #[test]
    fn decodes_provider_errors() {
        let cases: Vec<(u16, &[u8], ErrorKind, u16, &str)> = vec![
            (
                400,
                br#"{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":null}}"#,
                ErrorKind::InvalidRequest,
                400,
                "bad temperature",
            ),
            (
                401,
                br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                ErrorKind::Authentication,
                401,
                "Incorrect API key",
            ),
            (403, br#"{"error":{"message":"region"}}"#, ErrorKind::Permission, 403, "region"),
            (
                404,
                br#"{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}"#,
                ErrorKind::NotFound,
                404,
                "does not exist",
            ),
            (413, b"", ErrorKind::RequestTooLarge, 413, "status 413"),
            (422, br#"{"error":"unprocessable"}"#, ErrorKind::InvalidRequest, 422, "unprocessable"),
            (
                429,
                br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
                ErrorKind::RateLimit,
                429,
                "Rate limit",
            ),
            (
                500,
                br#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
                ErrorKind::Server,
                502,
                "server had an error",
            ),
            (
                500,
                br#"{"error":{"message":"busy","type":"service_unavailable_error","code":"server_is_overloaded"}}"#,
                ErrorKind::Overloaded,
                503,
                "busy",
            ),
            (503, b"<html><body>upstream 10.0.0.7 down</body></html>", ErrorKind::Overloaded, 503, "status 503"),
            (529, b"overloaded", ErrorKind::Overloaded, 503, "status 529"),
            (502, b"Bad Gateway", ErrorKind::Server, 502, "status 502"),
            (504, b"", ErrorKind::Timeout, 504, "status 504"),
            (408, b"", ErrorKind::Timeout, 504, "status 408"),
            (
                400,
                br#"[{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}]"#,
                ErrorKind::InvalidRequest,
                400,
                "Invalid JSON payload",
            ),
            (
                409,
                br#"{"message":"conflict","type":"x"}"#,
                ErrorKind::InvalidRequest,
                409,
                "conflict",
            ),
        ];
        for (status, body, kind, caller, message) in cases {
            let got = decode_error(status, body);
            assert_eq!(
                (got.kind, got.status),
                (kind, caller),
                "{status} {}",
                String::from_utf8_lossy(body)
            );
            assert!(got.message.contains(message), "{got:?}");
            assert!(
                !got.message.contains("10.0.0.7"),
                "raw bodies never reach the caller"
            );
        }
    }

    #[test]
    fn encodes_errors_with_openai_types() {
        let info = |kind, status| ErrorInfo {
            status,
            kind,
            message: "m".into(),
        };
        let cases = [
            (
                info(ErrorKind::InvalidRequest, 400),
                400,
                "invalid_request_error",
                Value::Null,
            ),
            (
                info(ErrorKind::Authentication, 401),
                401,
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            (
                info(ErrorKind::Permission, 403),
                403,
                "invalid_request_error",
                Value::Null,
            ),
            (
                info(ErrorKind::NotFound, 404),
                404,
                "invalid_request_error",
                Value::Null,
            ),
            (
                info(ErrorKind::RequestTooLarge, 413),
                413,
                "invalid_request_error",
                json!("request_too_large"),
            ),
            (
                info(ErrorKind::RateLimit, 429),
                429,
                "rate_limit_error",
                json!("rate_limit_exceeded"),
            ),
            (
                info(ErrorKind::Overloaded, 529),
                503,
                "service_unavailable_error",
                json!("server_is_overloaded"),
            ),
            (
                info(ErrorKind::Overloaded, 503),
                503,
                "service_unavailable_error",
                json!("server_is_overloaded"),
            ),
            (
                info(ErrorKind::Server, 502),
                502,
                "server_error",
                json!("server_error"),
            ),
            (
                info(ErrorKind::Server, 0),
                502,
                "server_error",
                json!("server_error"),
            ),
            (
                info(ErrorKind::Timeout, 504),
                504,
                "server_error",
                json!("timeout"),
            ),
        ];
        for (err, status, kind, code) in cases {
            let (got_status, body) = encode_error(&err);
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got_status.as_u16(), status, "{err:?}");
            assert_eq!(
                body,
                json!({"error": {"message": "m", "type": kind, "param": null, "code": code}}),
                "{err:?}"
            );
            // What we send, we read back as the same kind.
            let (status, body) = encode_error(&err);
            assert_eq!(decode_error(status.as_u16(), &body).kind, err.kind, "{err:?}");
        }
    }

    // --- streams ---

    /// Checks the IR stream grammar: Start, then blocks 0, 1, 2… each opened, fed and
    /// stopped before the next opens, then Finish/Usage, then Done.
    fn assert_well_formed(events: &[StreamEvent]) {
        assert!(
            matches!(events.first(), Some(StreamEvent::Start { .. })),
            "{events:#?}"
        );
        let mut open: Option<usize> = None;
        let mut next = 0;
        let mut finished = false;
        for e in &events[1..] {
            match e {
                StreamEvent::BlockStart { index, .. } => {
                    assert!(open.is_none() && !finished, "interleaved at {e:?}: {events:#?}");
                    assert_eq!(*index, next);
                    open = Some(*index);
                    next += 1;
                }
                StreamEvent::Delta { index, .. } => assert_eq!(open, Some(*index), "{e:?}"),
                StreamEvent::BlockStop { index } => {
                    assert_eq!(open, Some(*index), "{e:?}");
                    open = None;
                }
                StreamEvent::Finish { .. } | StreamEvent::Usage(_) => {
                    assert!(open.is_none(), "{e:?}");
                    finished = true;
                }
                StreamEvent::Done => assert!(finished && open.is_none()),
                StreamEvent::Start { .. } | StreamEvent::Error(_) => panic!("unexpected {e:?}"),
            }
        }
    }

    fn chunk(body: Value) -> String {
        let mut full = json!({"id": "chatcmpl-B9", "object": "chat.completion.chunk", "created": 1_741_000_000,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_1", "usage": null});
        for (k, v) in body.as_object().unwrap() {
            full[k] = v.clone();
        }
        format!("data: {full}\n\n")
    }

    fn delta(d: Value) -> String {
        chunk(json!({"choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": null}]}))
    }

    fn tool_start(index: u32, id: &str, name: &str) -> String {
        delta(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        )
    }

    fn tool_args(index: u32, args: &str) -> String {
        delta(json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]}))
    }

    fn finish(reason: &str) -> String {
        chunk(json!({"choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]}))
    }

    fn usage_chunk() -> String {
        chunk(
            json!({"choices": [], "usage": {"prompt_tokens": 82, "completion_tokens": 41, "total_tokens": 123,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}}),
        )
    }

    /// A stream shaped like OpenAI's: text, then two parallel tool calls whose arguments
    /// come in many fragments, the finish chunk, the include_usage chunk and [DONE].
    fn recorded_stream() -> String {
        [
            delta(json!({"role": "assistant", "content": "", "refusal": null})),
            delta(json!({"content": "Let me"})),
            delta(json!({"content": " check both."})),
            tool_start(0, "call_a", "get_weather"),
            tool_args(0, "{\"ci"),
            tool_args(0, "ty\": \"Pa"),
            tool_args(0, "ris, \\\"FR\\\" {x}"),
            tool_args(0, "\"}"),
            tool_start(1, "call_b", "get_time"),
            tool_args(1, "{\"tz\""),
            tool_args(1, ": \"Europe/"),
            tool_args(1, "Paris\"}"),
            finish("tool_calls"),
            usage_chunk(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
    }

    fn recorded_events() -> Vec<StreamEvent> {
        let d = |index, delta| StreamEvent::Delta { index, delta };
        vec![
            StreamEvent::Start {
                id: "chatcmpl-B9".into(),
                model: "gpt-4o-2024-08-06".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            d(0, Delta::Text("Let me".into())),
            d(0, Delta::Text(" check both.".into())),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "call_a".into(),
                    name: "get_weather".into(),
                },
            },
            d(1, Delta::ToolArguments("{\"ci".into())),
            d(1, Delta::ToolArguments("ty\": \"Pa".into())),
            d(1, Delta::ToolArguments("ris, \\\"FR\\\" {x}".into())),
            d(1, Delta::ToolArguments("\"}".into())),
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::ToolCall {
                    id: "call_b".into(),
                    name: "get_time".into(),
                },
            },
            d(2, Delta::ToolArguments("{\"tz\"".into())),
            d(2, Delta::ToolArguments(": \"Europe/".into())),
            d(2, Delta::ToolArguments("Paris\"}".into())),
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 82,
                output_tokens: 41,
                cached_input_tokens: 64,
                cache_creation_tokens: 0,
                reasoning_tokens: 0,
            }),
            StreamEvent::Done,
        ]
    }

    /// Feeds `pieces` through the framer, the SSE parser and a decoder.
    fn decode_stream(pieces: &[&[u8]]) -> (Vec<StreamEvent>, bool) {
        let mut framer = SseFramer::default();
        let mut decoder = StreamDecoder::new();
        let mut events = Vec::new();
        for piece in pieces {
            if let Some(whole) = framer.push(Bytes::copy_from_slice(piece)).unwrap() {
                for event in parse_events(&whole) {
                    events.extend(decoder.decode(&event).unwrap());
                }
            }
        }
        (events, decoder.is_done())
    }

    #[test]
    fn decodes_a_recorded_stream_however_it_is_split() {
        let stream = recorded_stream();
        let bytes = stream.as_bytes();
        let want = recorded_events();
        assert_well_formed(&want);
        let (got, done) = decode_stream(&[bytes]);
        assert_eq!(got, want);
        assert!(done);
        for i in 0..=bytes.len() {
            let (got, done) = decode_stream(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(got, want, "split at {i}");
            assert!(done);
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_stream(&single).0, want);
    }

    /// The argument text of each tool-call block, in block order.
    fn tool_arguments(events: &[StreamEvent]) -> Vec<(String, String)> {
        let mut calls: Vec<(usize, String, String)> = Vec::new();
        for e in events {
            match e {
                StreamEvent::BlockStart {
                    index,
                    kind: BlockKind::ToolCall { id, .. },
                } => calls.push((*index, id.clone(), String::new())),
                StreamEvent::Delta {
                    index,
                    delta: Delta::ToolArguments(a),
                } => {
                    let call = calls.iter_mut().find(|c| c.0 == *index).unwrap();
                    call.2.push_str(a);
                }
                _ => {}
            }
        }
        calls.into_iter().map(|(_, id, args)| (id, args)).collect()
    }

    #[test]
    fn interleaved_tool_calls_come_out_in_order() {
        let cases: Vec<Vec<String>> = vec![
            // Round robin over two calls.
            vec![
                tool_start(0, "call_a", "f"),
                tool_start(1, "call_b", "g"),
                tool_args(0, "{\"a\":"),
                tool_args(1, "{\"b\":"),
                tool_args(0, "\"}{\"}"),
                tool_args(1, "2}"),
                finish("tool_calls"),
            ],
            // The second call finishes before the first.
            vec![
                tool_start(0, "call_a", "f"),
                tool_args(0, "{\"a\":"),
                tool_start(1, "call_b", "g"),
                tool_args(1, "{\"b\":2}"),
                tool_args(0, "\"}{\"}"),
                finish("tool_calls"),
            ],
            // Both calls in one delta, then text after them.
            vec![
                delta(json!({"tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}},
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{\"b\":2}"}}
                ]})),
                delta(json!({"content": "x"})),
                tool_args(0, "\"}{\"}"),
                finish("tool_calls"),
            ],
            // Every call numbered 0, told apart by id.
            vec![
                tool_start(0, "call_a", "f"),
                tool_args(0, "{\"a\":"),
                tool_args(0, "\"}{\"}"),
                tool_start(0, "call_b", "g"),
                tool_args(0, "{\"b\":2}"),
                finish("tool_calls"),
            ],
            // No index at all: ids, then the latest call.
            vec![
                delta(
                    json!({"tool_calls": [{"id": "call_a", "function": {"name": "f", "arguments": "{\"a\":"}}]}),
                ),
                delta(json!({"tool_calls": [{"function": {"arguments": "\"}{\"}"}}]})),
                delta(
                    json!({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{\"b\""}}]}),
                ),
                delta(json!({"tool_calls": [{"id": "call_b", "function": {"arguments": ":2}"}}]})),
                finish("tool_calls"),
            ],
            // A call whose arguments never close is still emitted whole at the end.
            vec![
                tool_start(0, "call_a", "f"),
                tool_start(1, "call_b", "g"),
                tool_args(1, "{\"b\":2}"),
                tool_args(0, "{\"a\":\"}{\"}"),
                "data: [DONE]\n\n".to_owned(),
            ],
        ];
        for (n, case) in cases.into_iter().enumerate() {
            let stream = case.concat();
            let (events, _) = decode_stream(&[stream.as_bytes()]);
            let mut checked = events.clone();
            if !checked.iter().any(|e| matches!(e, StreamEvent::Done)) {
                checked.push(StreamEvent::Done);
            }
            assert_well_formed(&checked);
            let want = [("call_a", "{\"a\":\"}{\"}"), ("call_b", "{\"b\":2}")]
                .map(|(id, a)| (id.to_owned(), a.to_owned()));
            assert_eq!(tool_arguments(&events), want, "case {n}: {events:#?}");
        }
    }

    #[test]
    fn decodes_thinking_refusals_and_odd_providers() {
        let stream = [
            // Azure's prompt-filter chunk comes first, with no choices and no model.
            "data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"model\":\"\",\"choices\":[],\"prompt_filter_results\":[]}\n\n"
                .to_owned(),
            delta(json!({"role": "assistant", "reasoning_content": "Hmm"})),
            delta(json!({"reasoning_content": ", fine", "thinking_blocks": [{"type": "thinking", "thinking": ", fine"}]})),
            delta(json!({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig"}]})),
            delta(json!({"thinking_blocks": [{"type": "redacted_thinking", "data": "opaque"}]})),
            delta(json!({"refusal": "I can't"})),
            // A call in one piece, without `index`.
            delta(json!({"tool_calls": [{"id": "call_z", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})),
            chunk(json!({"choices": [{"index": 1, "delta": {"content": "other choice"}, "finish_reason": "stop"}]})),
            chunk(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2}})),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let (events, done) = decode_stream(&[stream.as_bytes()]);
        assert!(done);
        assert_well_formed(&events);
        let d = |index, delta| StreamEvent::Delta { index, delta };
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "chatcmpl-B9".into(),
                    model: "gpt-4o-2024-08-06".into()
                },
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::Thinking
                },
                d(0, Delta::Thinking("Hmm".into())),
                d(0, Delta::Thinking(", fine".into())),
                d(0, Delta::Signature("sig".into())),
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::BlockStart {
                    index: 1,
                    kind: BlockKind::RedactedThinking {
                        data: "opaque".into()
                    }
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::BlockStart {
                    index: 2,
                    kind: BlockKind::Text
                },
                d(2, Delta::Text("I can't".into())),
                StreamEvent::BlockStop { index: 2 },
                StreamEvent::BlockStart {
                    index: 3,
                    kind: BlockKind::ToolCall {
                        id: "call_z".into(),
                        name: "f".into()
                    }
                },
                d(3, Delta::ToolArguments("{}".into())),
                StreamEvent::BlockStop { index: 3 },
                StreamEvent::Finish {
                    stop: StopReason::EndTurn
                },
                StreamEvent::Usage(Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                    ..Usage::default()
                }),
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn stream_errors_and_bad_chunks() {
        let stream = [
            delta(json!({"content": "partial"})),
            "data: {\"error\":{\"message\":\"Selected model is at capacity\",\"type\":\"service_unavailable_error\",\"code\":\"server_is_overloaded\"}}\n\n".to_owned(),
            delta(json!({"content": "ignored"})),
        ]
        .concat();
        let (events, done) = decode_stream(&[stream.as_bytes()]);
        assert!(!done);
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Error(ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "Selected model is at capacity".into(),
            }))
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, StreamEvent::Delta { .. }))
                .count(),
            1
        );

        let mut decoder = StreamDecoder::new();
        let bad = SseEvent {
            event: None,
            data: "{not json".into(),
        };
        assert!(decoder.decode(&bad).is_err());
        let keepalive = SseEvent {
            event: None,
            data: String::new(),
        };
        assert_eq!(decoder.decode(&keepalive).unwrap(), vec![]);
    }

    /// Encodes `events`, then decodes the bytes back.
    fn through_encoder(events: &[StreamEvent], include_usage: bool) -> (Vec<StreamEvent>, Vec<Value>, Bytes) {
        let mut encoder = StreamEncoder::new(include_usage);
        let mut out = BytesMut::new();
        for e in events {
            encoder.encode(e, &mut out);
        }
        let out = out.freeze();
        let chunks = parse_events(&out)
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        (decode_stream(&[&out]).0, chunks, out)
    }

    fn thinking_events() -> Vec<StreamEvent> {
        let d = |index, delta| StreamEvent::Delta { index, delta };
        vec![
            StreamEvent::Start {
                id: "msg_01".into(),
                model: "claude-sonnet-4".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            d(0, Delta::Thinking("Let me think".into())),
            d(0, Delta::Signature("EqQBCkgIAR==".into())),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::RedactedThinking {
                    data: "opaque".into(),
                },
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::Text,
            },
            d(2, Delta::Text("Hi".into())),
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::Finish {
                stop: StopReason::EndTurn,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 5,
                output_tokens: 7,
                cached_input_tokens: 2,
                cache_creation_tokens: 0,
                reasoning_tokens: 3,
            }),
            StreamEvent::Done,
        ]
    }

    #[test]
    fn encoder_output_decodes_to_the_same_events() {
        for events in [recorded_events(), thinking_events()] {
            let (got, chunks, _) = through_encoder(&events, true);
            assert_eq!(got, events);
            for c in &chunks {
                assert_eq!(c["object"], "chat.completion.chunk");
                assert_eq!(c["id"], chunks[0]["id"]);
                assert_eq!(c["created"], chunks[0]["created"]);
                assert_eq!(c["model"], chunks[0]["model"]);
            }
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        }
    }

    #[test]
    fn encoder_writes_openai_chunks() {
        let (_, chunks, raw) = through_encoder(&recorded_events(), true);
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| &c["delta"])
            .collect();
        assert_eq!(*deltas[1], json!({"content": "Let me"}));
        assert_eq!(
            *deltas[3],
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            *deltas[4],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]})
        );
        assert_eq!(
            *deltas[8],
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                "function": {"name": "get_time", "arguments": ""}}]})
        );
        let last = &chunks[chunks.len() - 1];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(raw.ends_with(b"data: [DONE]\n\n"));
    }

    #[test]
    fn usage_chunk_only_when_the_caller_asked() {
        let (got, chunks, _) = through_encoder(&recorded_events(), false);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        let want: Vec<StreamEvent> = recorded_events()
            .into_iter()
            .filter(|e| !matches!(e, StreamEvent::Usage(_)))
            .collect();
        assert_eq!(got, want);

        // Usage before Finish still comes after the finish chunk.
        let mut events = recorded_events();
        let usage = events.remove(events.len() - 2);
        events.insert(events.len() - 2, usage);
        let (_, chunks, _) = through_encoder(&events, true);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(chunks[chunks.len() - 1].get("usage").is_some());
    }

    #[test]
    fn encoder_ends_an_errored_stream_with_the_error_only() {
        let events = vec![
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "m".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("par".into()),
            },
            StreamEvent::Error(ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "Overloaded".into(),
            }),
            StreamEvent::Done,
        ];
        let (got, chunks, raw) = through_encoder(&events, true);
        assert!(!raw.windows(6).any(|w| w == b"[DONE]"));
        assert_eq!(
            chunks.last().unwrap(),
            &json!({"error": {"message": "Overloaded", "type": "service_unavailable_error", "param": null,
                "code": "server_is_overloaded"}})
        );
        assert_eq!(got.last(), Some(&events[3]));
    }
}
