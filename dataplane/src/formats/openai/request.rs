//! Chat Completions requests: decoded into the canonical model, and encoded for an OpenAI provider.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{OutFunctionCall, OutToolCall, WireThinkingBlock};
use crate::formats::ir::{
    self, ChatRequest, ImageSource, Message, Part, ResponseFormat, Role, SystemBlock, Tool, ToolChoice,
};
use crate::formats::json::{BodyError, ShallowBody};

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
pub(crate) fn image_source(url: String) -> Option<ImageSource> {
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

pub(super) fn decode_thinking_blocks(blocks: Vec<WireThinkingBlock>) -> Result<Vec<Part>, String> {
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
pub(super) fn arguments_text(arguments: Value) -> String {
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
    max_tokens: Option<u32>,
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
///
/// The output limit goes as `max_completion_tokens` (what OpenAI's and Azure's reasoning models
/// require), or for an OpenAI-compatible host (`compatible`) as `max_tokens`, the one name every
/// such server knows (DeepSeek, Mistral, Ollama, llama.cpp and others take no other).
pub fn encode_request(req: &ChatRequest, model: &str, compatible: bool, dropped: &mut ir::Dropped) -> Bytes {
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
        max_completion_tokens: req.max_tokens.filter(|_| !compatible),
        max_tokens: req.max_tokens.filter(|_| compatible),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::formats::openai::test_support::{call, decode};
    use crate::formats::test_support::{assistant, ephemeral, text, user};

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
        let body = encode_request(req, "gpt-4o-mini", false, &mut dropped);
        (serde_json::from_slice(&body).unwrap(), dropped.names().to_vec())
    }

    #[test]
    fn the_output_limit_is_max_tokens_for_compatible_hosts_and_max_completion_tokens_for_openai() {
        let req = ChatRequest {
            max_tokens: Some(300),
            ..ChatRequest::default()
        };
        let mut dropped = ir::Dropped::default();
        let openai: Value = serde_json::from_slice(&encode_request(&req, "m", false, &mut dropped)).unwrap();
        assert_eq!(openai["max_completion_tokens"], 300);
        assert!(openai.get("max_tokens").is_none());
        let compatible: Value =
            serde_json::from_slice(&encode_request(&req, "m", true, &mut dropped)).unwrap();
        assert_eq!(compatible["max_tokens"], 300);
        assert!(compatible.get("max_completion_tokens").is_none());
        assert!(dropped.is_empty());
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
            let body = encode_request(&want, "gpt-4o-mini", false, &mut dropped);
            assert!(dropped.is_empty(), "{dropped:?}");
            assert_eq!(
                decode_request(&body).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
