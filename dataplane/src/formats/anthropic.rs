//! Anthropic Messages wire format (`POST /v1/messages`) translated to and from the canonical
//! model in [`ir`]: request and response bodies, error bodies and SSE streams.
//!
//! Owns the Anthropic shapes and the mapping rules; owns no I/O. Same-format traffic (an
//! Anthropic caller reaching an Anthropic provider) never comes here: it takes the shallow path.
//!
//! Mapping rules:
//! * Usage: Anthropic's `input_tokens` excludes cache reads and cache writes, the canonical
//!   count includes them; both directions convert.
//! * A tool call's `input` travels as JSON text byte for byte (key order included), so a
//!   conversation replayed through the gateway renders the same prompt and keeps the
//!   provider's prompt cache warm. Empty or invalid argument text becomes `{}`.
//! * `thinking: {type: enabled, budget_tokens}` is a budget, `{type: adaptive}` is thinking
//!   without a budget (the model decides), `{type: disabled}` is no thinking. Thinking
//!   signatures and redacted thinking are kept as given.
//! * Decoding refuses (400) what the canonical model has no place for: server tools,
//!   document and search-result blocks, file image sources, unknown `metadata` keys.
//!   Encoding records in [`ir::Dropped`] what Anthropic cannot express.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::ir::{self, BlockKind, Delta, ErrorKind, Part, StopReason, StreamEvent};
use super::json::{BodyError, ShallowBody, TextLen};
use super::sse::{SseEvent, write_event};
use super::tap::Observed;

/// `max_tokens` sent to Anthropic when the request names none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The smallest `thinking.budget_tokens` Anthropic accepts.
const MIN_THINKING_BUDGET: u32 = 1024;

/// Top-level request fields Anthropic accepts that the canonical model has no place for:
/// passed on from [`ir::ChatRequest::extra`]. Every other `extra` field is reported as dropped.
const PASS_THROUGH: &[&str] = &[
    "container",
    "context_management",
    "mcp_servers",
    "output_config",
    "output_format",
    "service_tier",
];

// ---------------------------------------------------------------------------------------------
// Wire shapes
// ---------------------------------------------------------------------------------------------

/// Any object's `type` field, read first to pick the shape of the rest.
#[derive(Deserialize)]
struct TypeTag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

/// A `type` field that may be absent (tools: custom tools may omit it).
#[derive(Deserialize)]
struct OptionalTypeTag<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
}

/// A content block, as written. Decoding reads the `type` first and then the matching
/// struct directly, so that raw tool input can be borrowed byte for byte.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text(TextBlock<'a>),
    Image(ImageBlock<'a>),
    ToolUse(ToolUseBlock<'a>),
    ToolResult(ToolResultOut<'a>),
    Thinking(ThinkingBlock<'a>),
    RedactedThinking(RedactedThinkingBlock<'a>),
}

#[derive(Serialize, Deserialize)]
struct TextBlock<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_control: Option<Cow<'a, Value>>,
}

#[derive(Serialize, Deserialize)]
struct ImageBlock<'a> {
    source: ImageSourceWire<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_control: Option<Cow<'a, Value>>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSourceWire<'a> {
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url {
        url: Cow<'a, str>,
    },
}

/// `cache_control` on a `tool_use` block is accepted and not kept: the canonical tool call
/// has no place for it.
#[derive(Serialize, Deserialize)]
struct ToolUseBlock<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    input: ToolInput<'a>,
}

#[derive(Deserialize)]
struct ToolResultIn<'a> {
    #[serde(borrow)]
    tool_use_id: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Serialize)]
struct ToolResultOut<'a> {
    tool_use_id: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    content: Vec<Block<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    is_error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'a Value>,
}

#[derive(Serialize, Deserialize)]
struct ThinkingBlock<'a> {
    #[serde(borrow)]
    thinking: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    signature: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct RedactedThinkingBlock<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// A tool call's `input`: a JSON object kept as the text it came as.
enum ToolInput<'a> {
    Raw(&'a RawValue),
    /// `{}`: no arguments, or argument text that was not a JSON object.
    Empty,
}

impl<'a> ToolInput<'a> {
    /// The input for canonical argument text; anything but a JSON object becomes `{}`.
    fn from_arguments(arguments: &'a str) -> Self {
        match serde_json::from_str::<&RawValue>(arguments.trim()) {
            Ok(raw) if raw.get().starts_with('{') => ToolInput::Raw(raw),
            _ => ToolInput::Empty,
        }
    }

    fn into_arguments(self) -> String {
        match self {
            ToolInput::Raw(raw) => raw.get().to_owned(),
            ToolInput::Empty => "{}".to_owned(),
        }
    }
}

impl Serialize for ToolInput<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ToolInput::Raw(raw) => raw.serialize(s),
            ToolInput::Empty => s.serialize_map(Some(0))?.end(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ToolInput<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(ToolInput::Raw)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleWire {
    User,
    Assistant,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    role: RoleWire,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Deserialize)]
struct ToolIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    input_schema: Value,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Cow<'a, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'a Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToolChoiceWire<'a> {
    Auto {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: Cow<'a, str>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    None {},
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ThinkingWire {
    Enabled { budget_tokens: u32 },
    Adaptive {},
    Disabled {},
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataIn {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Serialize)]
struct MetadataOut<'a> {
    user_id: &'a str,
}

/// `extra` fields passed on, in request order.
struct ExtraFields<'a>(Vec<(&'a str, &'a Value)>);

impl Serialize for ExtraFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct RequestOut<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    messages: Vec<MessageOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceWire<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingWire>,
    #[serde(skip_serializing_if = "is_empty_slice")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    stream: bool,
    #[serde(flatten)]
    extra: ExtraFields<'a>,
}

/// Anthropic usage. Every field may be absent or null on the wire.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct UsageIn {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// Anthropic's stream counts are cumulative and later events may omit fields: the latest
/// value of each field, from `message_start` and every `message_delta`. Kept the same way by
/// the decoder (translated streams) and [`EventTap`] (relayed ones).
#[derive(Debug, Clone, Copy, Default)]
struct UsageTally(UsageIn);

impl UsageTally {
    fn add(&mut self, later: UsageIn) {
        let s = &mut self.0;
        s.input_tokens = later.input_tokens.or(s.input_tokens);
        s.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(s.cache_creation_input_tokens);
        s.cache_read_input_tokens = later.cache_read_input_tokens.or(s.cache_read_input_tokens);
        s.output_tokens = later.output_tokens.or(s.output_tokens);
    }

    /// The counts, once any was seen.
    fn usage(&self) -> Option<ir::Usage> {
        let s = &self.0;
        let known = s.input_tokens.is_some()
            || s.output_tokens.is_some()
            || s.cache_read_input_tokens.is_some()
            || s.cache_creation_input_tokens.is_some();
        known.then(|| usage_from_wire(s))
    }
}

#[derive(Serialize)]
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

/// A whole message: the non-stream response body and the `message` of `message_start`.
#[derive(Serialize)]
struct MessageBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'a str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

#[derive(Deserialize)]
struct ResponseIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default, borrow)]
    content: Vec<&'a RawValue>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    error: Option<ErrorIn>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorIn,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Deserialize)]
struct MessageStartIn {
    message: MessageHeadIn,
}

#[derive(Deserialize)]
struct MessageHeadIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct BlockStartIn<'a> {
    index: usize,
    #[serde(borrow)]
    content_block: &'a RawValue,
}

#[derive(Deserialize)]
struct BlockDeltaIn<'a> {
    index: usize,
    delta: DeltaWire<'a>,
}

#[derive(Deserialize)]
struct IndexIn {
    index: usize,
}

#[derive(Deserialize)]
struct MessageDeltaIn {
    #[serde(default)]
    delta: Option<StopIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct StopIn {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaWire<'a> {
    TextDelta {
        text: Cow<'a, str>,
    },
    ThinkingDelta {
        thinking: Cow<'a, str>,
    },
    SignatureDelta {
        signature: Cow<'a, str>,
    },
    InputJsonDelta {
        partial_json: Cow<'a, str>,
    },
    /// Deltas that carry nothing the canonical model holds (e.g. `citations_delta`).
    #[serde(other)]
    Unknown,
}

#[derive(Serialize)]
struct StopOut<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
}

/// One event of an Anthropic stream, as written.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamOut<'a> {
    MessageStart { message: MessageBody<'a> },
    ContentBlockStart { index: usize, content_block: Block<'a> },
    ContentBlockDelta { index: usize, delta: DeltaWire<'a> },
    ContentBlockStop { index: usize },
    MessageDelta { delta: StopOut<'a>, usage: UsageOut },
    MessageStop,
    Error { error: ErrorOut<'a> },
}

impl StreamOut<'_> {
    /// The SSE `event:` name, which Anthropic sets to the `type`.
    fn name(&self) -> &'static str {
        match self {
            StreamOut::MessageStart { .. } => "message_start",
            StreamOut::ContentBlockStart { .. } => "content_block_start",
            StreamOut::ContentBlockDelta { .. } => "content_block_delta",
            StreamOut::ContentBlockStop { .. } => "content_block_stop",
            StreamOut::MessageDelta { .. } => "message_delta",
            StreamOut::MessageStop => "message_stop",
            StreamOut::Error { .. } => "error",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_empty_slice(s: &&[String]) -> bool {
    s.is_empty()
}

/// A serde error without its ` at line L column C` suffix, which points into a fragment.
fn clean(e: &serde_json::Error) -> String {
    let mut s = e.to_string();
    if let Some(at) = s.rfind(" at line ") {
        s.truncate(at);
    }
    s
}

fn from_json<'a, T: Deserialize<'a>>(json: &'a str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| clean(&e))
}

fn bad(message: String, param: Option<&'static str>) -> BodyError {
    BodyError { message, param }
}

/// A top-level request field, parsed; errors name the field.
fn field<'a, T: Deserialize<'a>>(raw: &'a RawValue, name: &'static str) -> Result<T, BodyError> {
    from_json(raw.get()).map_err(|e| bad(format!("{name}: {e}"), Some(name)))
}

// ---------------------------------------------------------------------------------------------
// Content blocks ⇄ parts
// ---------------------------------------------------------------------------------------------

/// One content block → a canonical part. The error says what is wrong, without a path.
fn parse_block(raw: &RawValue) -> Result<Part, String> {
    let json = raw.get();
    let tag: TypeTag<'_> = from_json(json)?;
    Ok(match &*tag.kind {
        "text" => {
            let b: TextBlock<'_> = from_json(json)?;
            Part::Text {
                text: b.text.into_owned(),
                cache_control: b.cache_control.map(Cow::into_owned),
            }
        }
        "image" => {
            let b: ImageBlock<'_> = from_json(json)?;
            let source = match b.source {
                ImageSourceWire::Base64 { media_type, data } => ir::ImageSource::Base64 {
                    media_type: media_type.into_owned(),
                    data: data.into_owned(),
                },
                ImageSourceWire::Url { url } => ir::ImageSource::Url(url.into_owned()),
            };
            Part::Image {
                source,
                cache_control: b.cache_control.map(Cow::into_owned),
            }
        }
        "tool_use" => {
            let b: ToolUseBlock<'_> = from_json(json)?;
            Part::ToolCall {
                id: b.id.into_owned(),
                name: b.name.into_owned(),
                arguments: b.input.into_arguments(),
            }
        }
        "tool_result" => {
            let b: ToolResultIn<'_> = from_json(json)?;
            Part::ToolResult {
                call_id: b.tool_use_id.into_owned(),
                content: tool_result_content(b.content)?,
                is_error: b.is_error.unwrap_or(false),
                cache_control: b.cache_control,
            }
        }
        "thinking" => {
            let b: ThinkingBlock<'_> = from_json(json)?;
            Part::Thinking {
                text: b.thinking.into_owned(),
                signature: b.signature.filter(|s| !s.is_empty()).map(Cow::into_owned),
            }
        }
        "redacted_thinking" => {
            let b: RedactedThinkingBlock<'_> = from_json(json)?;
            Part::RedactedThinking {
                data: b.data.into_owned(),
            }
        }
        other => return Err(format!("content block type `{other}` cannot be translated")),
    })
}

/// A `tool_result`'s `content`: absent, a string, or text and image blocks.
fn tool_result_content(raw: Option<&RawValue>) -> Result<Vec<Part>, String> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let json = raw.get();
    if json.starts_with('"') {
        let text: String = from_json(json)?;
        return Ok(text_parts(text));
    }
    let blocks: Vec<&RawValue> =
        from_json(json).map_err(|_| "content: must be a string or an array of content blocks".to_owned())?;
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| match parse_block(b) {
            Ok(p @ (Part::Text { .. } | Part::Image { .. })) => Ok(p),
            Ok(_) => Err(format!(
                "content.{i}: a tool result holds text and image blocks only"
            )),
            Err(e) => Err(format!("content.{i}: {e}")),
        })
        .collect()
}

/// A string content: one text part, or none for the empty string.
fn text_parts(text: String) -> Vec<Part> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![Part::Text {
            text,
            cache_control: None,
        }]
    }
}

fn text_block<'a>(text: &'a str, cache_control: Option<&'a Value>) -> Block<'a> {
    Block::Text(TextBlock {
        text: Cow::Borrowed(text),
        cache_control: cache_control.map(Cow::Borrowed),
    })
}

fn image_block<'a>(source: &'a ir::ImageSource, cache_control: Option<&'a Value>) -> Block<'a> {
    let source = match source {
        ir::ImageSource::Url(url) => ImageSourceWire::Url {
            url: Cow::Borrowed(url),
        },
        ir::ImageSource::Base64 { media_type, data } => ImageSourceWire::Base64 {
            media_type: Cow::Borrowed(media_type),
            data: Cow::Borrowed(data),
        },
    };
    Block::Image(ImageBlock {
        source,
        cache_control: cache_control.map(Cow::Borrowed),
    })
}

fn tool_use_block<'a>(id: &'a str, name: &'a str, input: ToolInput<'a>) -> Block<'a> {
    Block::ToolUse(ToolUseBlock {
        id: Cow::Borrowed(id),
        name: Cow::Borrowed(name),
        input,
    })
}

/// A request part → a block. Anthropic refuses empty text blocks and thinking blocks
/// without a signature, so those are left out (a lost cache marker or unsigned thinking is
/// reported).
fn request_block<'a>(part: &'a Part, dropped: &mut ir::Dropped) -> Option<Block<'a>> {
    match part {
        Part::Text { text, cache_control } => {
            if text.is_empty() {
                if cache_control.is_some() {
                    dropped.add("cache_control");
                }
                return None;
            }
            Some(text_block(text, cache_control.as_ref()))
        }
        Part::Image {
            source,
            cache_control,
        } => Some(image_block(source, cache_control.as_ref())),
        Part::ToolCall { id, name, arguments } => {
            Some(tool_use_block(id, name, ToolInput::from_arguments(arguments)))
        }
        Part::ToolResult {
            call_id,
            content,
            is_error,
            cache_control,
        } => {
            let content = content
                .iter()
                .filter_map(|p| match p {
                    Part::Text { .. } | Part::Image { .. } => request_block(p, dropped),
                    _ => {
                        dropped.add("tool_result_content");
                        None
                    }
                })
                .collect();
            Some(Block::ToolResult(ToolResultOut {
                tool_use_id: call_id,
                content,
                is_error: *is_error,
                cache_control: cache_control.as_ref(),
            }))
        }
        Part::Thinking { text, signature } => match signature.as_deref().filter(|s| !s.is_empty()) {
            Some(signature) => Some(Block::Thinking(ThinkingBlock {
                thinking: Cow::Borrowed(text),
                signature: Some(Cow::Borrowed(signature)),
            })),
            None => {
                dropped.add("thinking");
                None
            }
        },
        Part::RedactedThinking { data } => Some(Block::RedactedThinking(RedactedThinkingBlock {
            data: Cow::Borrowed(data),
        })),
    }
}

/// A response part → a block. An answer holds text, tool calls and thinking only.
fn response_block<'a>(part: &'a Part, dropped: &mut ir::Dropped) -> Option<Block<'a>> {
    match part {
        Part::Text { text, cache_control } => Some(text_block(text, cache_control.as_ref())),
        Part::ToolCall { id, name, arguments } => {
            Some(tool_use_block(id, name, ToolInput::from_arguments(arguments)))
        }
        Part::Thinking { text, signature } => Some(Block::Thinking(ThinkingBlock {
            thinking: Cow::Borrowed(text),
            signature: Some(Cow::Borrowed(signature.as_deref().unwrap_or(""))),
        })),
        Part::RedactedThinking { data } => Some(Block::RedactedThinking(RedactedThinkingBlock {
            data: Cow::Borrowed(data),
        })),
        Part::Image { .. } => {
            dropped.add("image");
            None
        }
        Part::ToolResult { .. } => {
            dropped.add("tool_result");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Anthropic `POST /v1/messages` request body → the canonical request. Unknown top-level
/// fields go to [`ir::ChatRequest::extra`] in request order. Errors are 400s whose message
/// names the offending field (`messages.2.content.0: …`).
pub fn decode_request(body: &[u8]) -> Result<ir::ChatRequest, BodyError> {
    // Positions (` at line 1 column 9`) mean little to an API caller; the field name does.
    let top = ShallowBody::parse(body).map_err(|mut e| {
        if let Some(at) = e.message.find(" at line ") {
            e.message.truncate(at);
        }
        e
    })?;

    let mut req = ir::ChatRequest::default();
    let mut model = None;
    let mut messages = None;
    for (key, raw) in top.entries() {
        match key {
            "model" => model = Some(field::<String>(raw, "model")?),
            "messages" => messages = Some(decode_messages(raw)?),
            "system" => req.system = decode_system(raw)?,
            "max_tokens" => req.max_tokens = field(raw, "max_tokens")?,
            "temperature" => req.temperature = field(raw, "temperature")?,
            "top_p" => req.top_p = field(raw, "top_p")?,
            "top_k" => req.top_k = field(raw, "top_k")?,
            "stop_sequences" => {
                req.stop = field::<Option<Vec<String>>>(raw, "stop_sequences")?.unwrap_or_default();
            }
            "stream" => req.stream = field::<Option<bool>>(raw, "stream")?.unwrap_or(false),
            "metadata" => {
                req.user = field::<Option<MetadataIn>>(raw, "metadata")?.and_then(|m| m.user_id);
            }
            "tools" => req.tools = decode_tools(raw)?,
            "tool_choice" => {
                let choice = field::<Option<ToolChoiceWire<'_>>>(raw, "tool_choice")?;
                let (choice, parallel) = match choice {
                    None => (None, None),
                    Some(ToolChoiceWire::Auto {
                        disable_parallel_tool_use,
                    }) => (Some(ir::ToolChoice::Auto), disable_parallel_tool_use),
                    Some(ToolChoiceWire::Any {
                        disable_parallel_tool_use,
                    }) => (Some(ir::ToolChoice::Required), disable_parallel_tool_use),
                    Some(ToolChoiceWire::Tool {
                        name,
                        disable_parallel_tool_use,
                    }) => (
                        Some(ir::ToolChoice::Tool(name.into_owned())),
                        disable_parallel_tool_use,
                    ),
                    Some(ToolChoiceWire::None {}) => (Some(ir::ToolChoice::None), None),
                };
                req.tool_choice = choice;
                req.parallel_tool_calls = parallel.map(|disable| !disable);
            }
            "thinking" => {
                req.thinking = match field::<Option<ThinkingWire>>(raw, "thinking")? {
                    Some(ThinkingWire::Enabled { budget_tokens }) => Some(ir::Thinking {
                        budget_tokens: Some(budget_tokens),
                    }),
                    Some(ThinkingWire::Adaptive {}) => Some(ir::Thinking { budget_tokens: None }),
                    Some(ThinkingWire::Disabled {}) | None => None,
                };
            }
            _ => {
                let value: Value = serde_json::from_str(raw.get())
                    .map_err(|e| bad(format!("{key}: {}", clean(&e)), None))?;
                req.extra.push((key.to_owned(), value));
            }
        }
    }
    req.model = model.ok_or_else(|| bad("you must provide a model parameter".into(), Some("model")))?;
    if req.model.is_empty() {
        return Err(bad("model must not be empty".into(), Some("model")));
    }
    req.messages = messages.ok_or_else(|| bad("messages: field required".into(), Some("messages")))?;
    Ok(req)
}

/// `system`: a string, or an array of text blocks (each may carry `cache_control`).
fn decode_system(raw: &RawValue) -> Result<Vec<ir::SystemBlock>, BodyError> {
    let into_block = |part: Part| match part {
        Part::Text { text, cache_control } => Some(ir::SystemBlock { text, cache_control }),
        _ => None,
    };
    match raw.get().as_bytes().first() {
        Some(b'n') => Ok(Vec::new()),
        Some(b'"') => Ok(text_parts(field(raw, "system")?)
            .into_iter()
            .filter_map(into_block)
            .collect()),
        _ => {
            let blocks: Vec<&RawValue> = field(raw, "system")?;
            blocks
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let part = parse_block(b).map_err(|e| bad(format!("system.{i}: {e}"), Some("system")))?;
                    into_block(part).ok_or_else(|| {
                        bad(
                            format!("system.{i}: system prompt blocks must be text blocks"),
                            Some("system"),
                        )
                    })
                })
                .collect()
        }
    }
}

fn decode_messages(raw: &RawValue) -> Result<Vec<ir::Message>, BodyError> {
    let messages: Vec<&RawValue> = field(raw, "messages")?;
    let err = |message: String| bad(message, Some("messages"));
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let m: MessageIn<'_> = from_json(m.get()).map_err(|e| err(format!("messages.{i}: {e}")))?;
            let content = m.content.get();
            let parts = if content.starts_with('"') {
                text_parts(from_json(content).map_err(|e| err(format!("messages.{i}.content: {e}")))?)
            } else if content.starts_with('[') {
                let blocks: Vec<&RawValue> =
                    from_json(content).map_err(|e| err(format!("messages.{i}.content: {e}")))?;
                blocks
                    .iter()
                    .enumerate()
                    .map(|(j, b)| parse_block(b).map_err(|e| err(format!("messages.{i}.content.{j}: {e}"))))
                    .collect::<Result<_, _>>()?
            } else {
                return Err(err(format!(
                    "messages.{i}.content: must be a string or an array of content blocks"
                )));
            };
            let role = match m.role {
                RoleWire::User => ir::Role::User,
                RoleWire::Assistant => ir::Role::Assistant,
            };
            Ok(ir::Message { role, parts })
        })
        .collect()
}

/// `tools`: custom tools only; Anthropic server tools (`web_search_…`, `bash_…`, …) have no
/// counterpart elsewhere and are refused.
fn decode_tools(raw: &RawValue) -> Result<Vec<ir::Tool>, BodyError> {
    let tools: Option<Vec<&RawValue>> = field(raw, "tools")?;
    tools
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let err = |message: String| bad(format!("tools.{i}: {message}"), Some("tools"));
            let tag: OptionalTypeTag<'_> = from_json(t.get()).map_err(err)?;
            if let Some(kind) = tag.kind.as_deref().filter(|k| *k != "custom") {
                return Err(err(format!(
                    "tool type `{kind}` is an Anthropic server tool and cannot be translated"
                )));
            }
            let tool: ToolIn = from_json(t.get()).map_err(err)?;
            Ok(ir::Tool {
                name: tool.name,
                description: tool.description,
                parameters: tool.input_schema,
                cache_control: tool.cache_control,
            })
        })
        .collect()
}

/// The thinking budget for an OpenAI `reasoning_effort`: `Some(None)` for no thinking,
/// `None` for an effort with no known meaning.
fn effort_budget(effort: &str) -> Option<Option<u32>> {
    match effort {
        "none" => Some(None),
        "minimal" | "low" => Some(Some(1024)),
        "medium" => Some(Some(2048)),
        "high" => Some(Some(4096)),
        "xhigh" => Some(Some(8192)),
        _ => None,
    }
}

/// An `extra` value that asks for nothing beyond the default, so nothing is lost without it.
fn is_noop(key: &str, value: &Value) -> bool {
    match key {
        _ if value.is_null() => true,
        "n" => value.as_u64() == Some(1),
        "logprobs" => value.as_bool() == Some(false),
        "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
        // Anthropic streams always report usage.
        "stream_options" => true,
        _ => false,
    }
}

/// The canonical request → an Anthropic request body for `model`.
///
/// * `max_tokens` defaults to [`DEFAULT_MAX_TOKENS`] (raised above the thinking budget when
///   thinking needs more).
/// * `thinking` with a budget → `{type: enabled}`, without → `{type: adaptive}`.
///   `reasoning_effort` without `thinking` becomes a thinking budget (low 1024, medium 2048,
///   high 4096; `none`: no thinking); beside `thinking`, or unknown, it is dropped.
/// * Dropped: `response_format` (JSON object / schema), `temperature` above 1 (clamped),
///   thinking blocks without a signature, empty text blocks carrying `cache_control`,
///   non-text/image parts of a tool result, and every `extra` field Anthropic does not accept
///   (by name; `n: 1`, `logprobs: false`, zero penalties and nulls count as absent).
pub fn encode_request(req: &ir::ChatRequest, model: &str, dropped: &mut ir::Dropped) -> Bytes {
    let system = req
        .system
        .iter()
        .filter_map(|b| {
            if b.text.is_empty() {
                if b.cache_control.is_some() {
                    dropped.add("cache_control");
                }
                return None;
            }
            Some(text_block(&b.text, b.cache_control.as_ref()))
        })
        .collect();

    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let content: Vec<Block<'_>> = m.parts.iter().filter_map(|p| request_block(p, dropped)).collect();
        if content.is_empty() {
            continue;
        }
        let role = match m.role {
            ir::Role::User => "user",
            ir::Role::Assistant => "assistant",
        };
        messages.push(MessageOut { role, content });
    }

    let tools: Vec<ToolOut<'_>> = req
        .tools
        .iter()
        .map(|t| ToolOut {
            name: &t.name,
            description: t.description.as_deref(),
            input_schema: if t.parameters.is_object() {
                Cow::Borrowed(&t.parameters)
            } else {
                Cow::Owned(serde_json::json!({ "type": "object", "properties": {} }))
            },
            cache_control: t.cache_control.as_ref(),
        })
        .collect();

    let has_tools = !tools.is_empty();
    let disable_parallel_tool_use = req.parallel_tool_calls.map(|p| !p);
    let tool_choice = match &req.tool_choice {
        // Without tools, "auto" and "none" say nothing, and Anthropic refuses a choice without tools.
        None | Some(ir::ToolChoice::Auto | ir::ToolChoice::None) if !has_tools => None,
        None => disable_parallel_tool_use.map(|d| ToolChoiceWire::Auto {
            disable_parallel_tool_use: Some(d),
        }),
        Some(ir::ToolChoice::Auto) => Some(ToolChoiceWire::Auto {
            disable_parallel_tool_use,
        }),
        Some(ir::ToolChoice::Required) => Some(ToolChoiceWire::Any {
            disable_parallel_tool_use,
        }),
        Some(ir::ToolChoice::Tool(name)) => Some(ToolChoiceWire::Tool {
            name: Cow::Borrowed(name),
            disable_parallel_tool_use,
        }),
        Some(ir::ToolChoice::None) => Some(ToolChoiceWire::None {}),
    };

    let thinking = match (&req.thinking, req.reasoning_effort.as_deref()) {
        (Some(t), effort) => {
            if effort.is_some() {
                dropped.add("reasoning_effort");
            }
            Some(match t.budget_tokens {
                Some(budget_tokens) => ThinkingWire::Enabled { budget_tokens },
                None => ThinkingWire::Adaptive {},
            })
        }
        (None, Some(effort)) => match effort_budget(effort) {
            Some(None) => None,
            Some(Some(budget)) => {
                // OpenAI's max tokens include reasoning: keep the budget below it.
                let budget = match req.max_tokens {
                    Some(max) if budget >= max => max / 2,
                    _ => budget,
                };
                if budget >= MIN_THINKING_BUDGET {
                    Some(ThinkingWire::Enabled {
                        budget_tokens: budget,
                    })
                } else {
                    dropped.add("reasoning_effort");
                    None
                }
            }
            None => {
                dropped.add("reasoning_effort");
                None
            }
        },
        (None, None) => None,
    };

    let max_tokens = match (req.max_tokens, &thinking) {
        (Some(max), _) => max,
        (None, Some(ThinkingWire::Enabled { budget_tokens })) if *budget_tokens >= DEFAULT_MAX_TOKENS => {
            budget_tokens.saturating_add(DEFAULT_MAX_TOKENS)
        }
        (None, _) => DEFAULT_MAX_TOKENS,
    };

    let temperature = req.temperature.map(|t| {
        if t > 1.0 {
            dropped.add("temperature");
            1.0
        } else {
            t
        }
    });

    if matches!(
        req.response_format,
        Some(ir::ResponseFormat::JsonObject | ir::ResponseFormat::JsonSchema { .. })
    ) {
        dropped.add("response_format");
    }

    let mut extra = Vec::new();
    for (key, value) in &req.extra {
        if is_noop(key, value) {
            continue;
        }
        let accepted = PASS_THROUGH.contains(&key.as_str())
            && (key != "service_tier" || matches!(value.as_str(), Some("auto" | "standard_only")));
        if accepted {
            extra.push((key.as_str(), value));
        } else {
            dropped.add(key.as_str());
        }
    }

    let out = RequestOut {
        model,
        max_tokens,
        system,
        messages,
        tools,
        tool_choice,
        thinking,
        stop_sequences: &req.stop,
        temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        metadata: req.user.as_deref().map(|user_id| MetadataOut { user_id }),
        stream: req.stream,
        extra: ExtraFields(extra),
    };
    to_bytes(&out)
}

/// Serializes a wire value. Our shapes have string keys and no fallible `Serialize`, so this
/// cannot fail; an empty body would be refused upstream rather than sent half-written.
fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).map(Bytes::from).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Responses, usage, stop reasons
// ---------------------------------------------------------------------------------------------

/// Anthropic usage → canonical usage (input tokens made to include cache reads and writes).
fn usage_from_wire(u: &UsageIn) -> ir::Usage {
    let cached = u.cache_read_input_tokens.unwrap_or(0);
    let creation = u.cache_creation_input_tokens.unwrap_or(0);
    ir::Usage {
        input_tokens: u
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached)
            .saturating_add(creation),
        output_tokens: u.output_tokens.unwrap_or(0),
        cached_input_tokens: cached,
        cache_creation_tokens: creation,
        reasoning_tokens: 0,
    }
}

/// The `usage` of an Anthropic message body relayed as it is.
pub fn body_usage(body: &[u8]) -> Option<ir::Usage> {
    let parsed = ShallowBody::parse(body).ok()?;
    let u: UsageIn = serde_json::from_str(parsed.get("usage")?.get()).ok()?;
    Some(usage_from_wire(&u))
}

/// Canonical usage → Anthropic usage (input tokens without cache reads and writes).
/// Reasoning tokens stay inside `output_tokens`, which Anthropic does not break down.
fn usage_to_wire(u: &ir::Usage) -> UsageOut {
    UsageOut {
        input_tokens: u
            .input_tokens
            .saturating_sub(u.cached_input_tokens.saturating_add(u.cache_creation_tokens)),
        cache_creation_input_tokens: u.cache_creation_tokens,
        cache_read_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
    }
}

fn stop_from_wire(reason: Option<&str>, sequence: Option<String>) -> StopReason {
    match reason {
        None | Some("end_turn") => StopReason::EndTurn,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence(sequence),
        Some("tool_use") => StopReason::ToolUse,
        Some(other) => StopReason::Other(other.to_owned()),
    }
}

/// `(stop_reason, stop_sequence)`. A content filter is Anthropic's `refusal`; other
/// provider reasons pass as given.
fn stop_to_wire(stop: &StopReason) -> (&str, Option<&str>) {
    match stop {
        StopReason::EndTurn => ("end_turn", None),
        StopReason::MaxTokens => ("max_tokens", None),
        StopReason::StopSequence(seq) => ("stop_sequence", seq.as_deref()),
        StopReason::ToolUse => ("tool_use", None),
        StopReason::ContentFilter => ("refusal", None),
        StopReason::Other(other) if is_anthropic_stop(other) => (other, None),
        StopReason::Other(_) => ("end_turn", None),
    }
}

/// Stop reasons Anthropic's API documents; another provider's reason is not one of them.
fn is_anthropic_stop(reason: &str) -> bool {
    matches!(
        reason,
        "end_turn"
            | "max_tokens"
            | "stop_sequence"
            | "tool_use"
            | "pause_turn"
            | "refusal"
            | "model_context_window_exceeded"
    )
}

/// Anthropic response body → the canonical answer.
pub fn decode_response(body: &[u8]) -> Result<ir::ChatResponse, ir::DecodeError> {
    let r: ResponseIn<'_> = serde_json::from_slice(body)
        .map_err(|e| ir::DecodeError(format!("invalid Anthropic response body: {}", clean(&e))))?;
    match r.kind.as_deref() {
        None | Some("message") => {}
        Some("error") => {
            let message = r.error.and_then(|e| e.message).unwrap_or_default();
            return Err(ir::DecodeError(format!(
                "provider answered with an error: {message}"
            )));
        }
        Some(other) => {
            return Err(ir::DecodeError(format!(
                "unexpected Anthropic response type `{other}`"
            )));
        }
    }
    let parts = r
        .content
        .iter()
        .enumerate()
        .map(|(i, b)| parse_block(b).map_err(|e| ir::DecodeError(format!("content.{i}: {e}"))))
        .collect::<Result<_, _>>()?;
    Ok(ir::ChatResponse {
        id: r.id,
        model: r.model,
        parts,
        stop: stop_from_wire(r.stop_reason.as_deref(), r.stop_sequence),
        usage: usage_from_wire(&r.usage.unwrap_or_default()),
        created: None,
    })
}

/// The canonical answer → an Anthropic response body. Images and tool results cannot be
/// part of an answer and are reported as dropped; a thinking block without a signature gets
/// an empty one.
pub fn encode_response(resp: &ir::ChatResponse, dropped: &mut ir::Dropped) -> Bytes {
    if matches!(&resp.stop, StopReason::Other(other) if !is_anthropic_stop(other)) {
        dropped.add("stop_reason");
    }
    let (stop_reason, stop_sequence) = stop_to_wire(&resp.stop);
    let body = MessageBody {
        id: &resp.id,
        kind: "message",
        role: "assistant",
        model: &resp.model,
        content: resp
            .parts
            .iter()
            .filter_map(|p| response_block(p, dropped))
            .collect(),
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: usage_to_wire(&resp.usage),
    };
    to_bytes(&body)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn kind_from_type(kind: &str) -> Option<ErrorKind> {
    Some(match kind {
        "invalid_request_error" | "conflict_error" => ErrorKind::InvalidRequest,
        "authentication_error" => ErrorKind::Authentication,
        "permission_error" | "billing_error" => ErrorKind::Permission,
        "not_found_error" => ErrorKind::NotFound,
        "request_too_large" => ErrorKind::RequestTooLarge,
        "rate_limit_error" => ErrorKind::RateLimit,
        "overloaded_error" => ErrorKind::Overloaded,
        "api_error" => ErrorKind::Server,
        "timeout_error" => ErrorKind::Timeout,
        _ => return None,
    })
}

fn kind_from_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Authentication,
        402 | 403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimit,
        503 | 529 => ErrorKind::Overloaded,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Server,
    }
}

fn default_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 529,
        ErrorKind::Server => 500,
        ErrorKind::Timeout => 504,
    }
}

/// A provider error answer (status and body, which may not be JSON) → a canonical error.
/// The kind comes from the Anthropic `error.type` when there is one, else from the status;
/// the status is kept when it is an error status. A body that is not an Anthropic error is
/// never shown to the caller (it may be a proxy's HTML page).
pub fn decode_error(status: u16, body: &[u8]) -> ir::ErrorInfo {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok();
    let (kind, message) = match parsed {
        Some(env) => (
            env.error.kind.as_deref().and_then(kind_from_type),
            env.error.message.filter(|m| !m.is_empty()),
        ),
        None => (None, None),
    };
    let kind = kind.unwrap_or_else(|| kind_from_status(status));
    ir::ErrorInfo {
        status: if (400..=599).contains(&status) {
            status
        } else {
            default_status(kind)
        },
        kind,
        message: message.unwrap_or_else(|| format!("provider returned HTTP {status}")),
    }
}

/// The Anthropic status and `error.type` for a canonical error.
fn error_wire(err: &ir::ErrorInfo) -> (u16, &'static str) {
    match err.kind {
        ErrorKind::InvalidRequest if (400..=499).contains(&err.status) => {
            (err.status, "invalid_request_error")
        }
        ErrorKind::InvalidRequest => (400, "invalid_request_error"),
        ErrorKind::Authentication => (401, "authentication_error"),
        ErrorKind::Permission if err.status == 402 => (402, "billing_error"),
        ErrorKind::Permission => (403, "permission_error"),
        ErrorKind::NotFound => (404, "not_found_error"),
        ErrorKind::RequestTooLarge => (413, "request_too_large"),
        ErrorKind::RateLimit => (429, "rate_limit_error"),
        ErrorKind::Overloaded => (529, "overloaded_error"),
        ErrorKind::Server if (500..=599).contains(&err.status) => (err.status, "api_error"),
        ErrorKind::Server => (500, "api_error"),
        ErrorKind::Timeout => (504, "timeout_error"),
    }
}

/// A canonical error → the Anthropic error body `{"type":"error","error":{"type","message"}}`
/// and the status to send: overloaded → 529 `overloaded_error`, rate limit → 429
/// `rate_limit_error`, timeout → 504 `timeout_error`, other server errors keep their 5xx.
pub fn encode_error(err: &ir::ErrorInfo) -> (http::StatusCode, Bytes) {
    let (status, kind) = error_wire(err);
    let body = StreamOut::Error {
        error: ErrorOut {
            kind,
            message: &err.message,
        },
    };
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, to_bytes(&body))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

fn stream_decode_error(e: &serde_json::Error) -> ir::DecodeError {
    ir::DecodeError(format!("invalid Anthropic stream event: {}", clean(e)))
}

#[derive(Deserialize)]
struct TapEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<TapMessage>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    delta: Option<TapDelta>,
}

#[derive(Deserialize)]
struct TapMessage {
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct TapDelta {
    #[serde(default)]
    text: TextLen,
    #[serde(default)]
    partial_json: TextLen,
    #[serde(default)]
    thinking: TextLen,
}

/// What the meter reads from an Anthropic stream relayed as it is: the usage of
/// `message_start` and `message_delta` (kept as the decoder keeps it), the text of deltas,
/// and `message_stop` or `error`, which end the stream. Each event is parsed as JSON; its
/// `type` decides, the `event:` name only when the data has none.
#[derive(Debug, Default)]
pub struct EventTap {
    usage: UsageTally,
}

impl EventTap {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let parsed = serde_json::from_str::<TapEvent<'_>>(&event.data).ok();
        let kind = parsed
            .as_ref()
            .and_then(|e| e.kind.as_deref())
            .or(event.event.as_deref());
        let terminal = matches!(kind, Some("message_stop" | "error"));
        let Some(parsed) = parsed else {
            return Observed {
                terminal,
                ..Observed::default()
            };
        };
        if let Some(u) = parsed.message.and_then(|m| m.usage).or(parsed.usage) {
            self.usage.add(u);
        }
        Observed {
            chars: parsed
                .delta
                .map_or(0, |d| d.text.0 + d.partial_json.0 + d.thinking.0),
            terminal,
            usage_only: false,
        }
    }

    pub fn usage(&self) -> Option<ir::Usage> {
        self.usage.usage()
    }
}

fn parse_event<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ir::DecodeError> {
    serde_json::from_str(data).map_err(|e| stream_decode_error(&e))
}

/// Anthropic SSE stream → canonical stream events. Feed every parsed event in order.
///
/// `message_start` gives `Start` and the prompt-side usage, which is held until
/// `message_delta`; that gives `Finish` and one `Usage` combining both (Anthropic's counts
/// are cumulative). `message_stop` gives `Done`, an `error` event gives `Error`; nothing is
/// produced after either. `ping` and event types added later are ignored.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    usage: UsageTally,
    finished: bool,
    usage_sent: bool,
    done: bool,
    failed: bool,
    /// A `tool_use` that started with its whole input (and index): emitted at its stop
    /// unless `input_json_delta`s bring the input instead.
    pending_input: Option<(usize, String)>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `message_stop` was seen (an `error` event ends the stream without it).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<ir::Usage> {
        self.usage.usage()
    }

    pub fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ir::DecodeError> {
        let mut out = Vec::new();
        let data = event.data.trim();
        if self.done || self.failed || data.is_empty() {
            return Ok(out);
        }
        let tag: TypeTag<'_> = parse_event(data)?;
        match &*tag.kind {
            "message_start" => {
                let start: MessageStartIn = parse_event(data)?;
                self.usage.add(start.message.usage.unwrap_or_default());
                out.push(StreamEvent::Start {
                    id: start.message.id,
                    model: start.message.model,
                });
            }
            "content_block_start" => {
                let start: BlockStartIn<'_> = parse_event(data)?;
                self.block_start(start, &mut out)?;
            }
            "content_block_delta" => {
                let BlockDeltaIn { index, delta } = parse_event(data)?;
                let delta = match delta {
                    DeltaWire::TextDelta { text } => Delta::Text(text.into_owned()),
                    DeltaWire::ThinkingDelta { thinking } => Delta::Thinking(thinking.into_owned()),
                    DeltaWire::SignatureDelta { signature } => Delta::Signature(signature.into_owned()),
                    DeltaWire::InputJsonDelta { partial_json } => {
                        // An empty fragment carries nothing; the input given at the start stays.
                        if partial_json.is_empty() {
                            return Ok(out);
                        }
                        if self.pending_input.as_ref().is_some_and(|(i, _)| *i == index) {
                            self.pending_input = None;
                        }
                        Delta::ToolArguments(partial_json.into_owned())
                    }
                    DeltaWire::Unknown => return Ok(out),
                };
                out.push(StreamEvent::Delta { index, delta });
            }
            "content_block_stop" => {
                let IndexIn { index } = parse_event(data)?;
                if let Some((_, input)) = self.pending_input.take_if(|(i, _)| *i == index) {
                    out.push(StreamEvent::Delta {
                        index,
                        delta: Delta::ToolArguments(input),
                    });
                }
                out.push(StreamEvent::BlockStop { index });
            }
            "message_delta" => {
                let delta: MessageDeltaIn = parse_event(data)?;
                if let Some(StopIn {
                    stop_reason: Some(reason),
                    stop_sequence,
                }) = delta.delta
                    && !self.finished
                {
                    self.finished = true;
                    out.push(StreamEvent::Finish {
                        stop: stop_from_wire(Some(&reason), stop_sequence),
                    });
                }
                self.usage.add(delta.usage.unwrap_or_default());
                self.usage_sent = true;
                out.push(StreamEvent::Usage(self.usage.usage().unwrap_or_default()));
            }
            "message_stop" => {
                if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish {
                        stop: StopReason::EndTurn,
                    });
                }
                if !self.usage_sent
                    && let Some(usage) = self.usage.usage()
                {
                    self.usage_sent = true;
                    out.push(StreamEvent::Usage(usage));
                }
                self.done = true;
                out.push(StreamEvent::Done);
            }
            "error" => {
                let env: ErrorEnvelope = parse_event(data)?;
                self.failed = true;
                let kind = env
                    .error
                    .kind
                    .as_deref()
                    .and_then(kind_from_type)
                    .unwrap_or(ErrorKind::Server);
                out.push(StreamEvent::Error(ir::ErrorInfo {
                    status: default_status(kind),
                    kind,
                    message: env
                        .error
                        .message
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| "provider reported an error in the stream".to_owned()),
                }));
            }
            _ => {}
        }
        Ok(out)
    }

    fn block_start(
        &mut self,
        start: BlockStartIn<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ir::DecodeError> {
        let index = start.index;
        let part = parse_block(start.content_block)
            .map_err(|e| ir::DecodeError(format!("content_block_start: {e}")))?;
        let mut deltas = Vec::new();
        let kind = match part {
            Part::Text { text, .. } => {
                if !text.is_empty() {
                    deltas.push(Delta::Text(text));
                }
                BlockKind::Text
            }
            Part::Thinking { text, signature } => {
                if !text.is_empty() {
                    deltas.push(Delta::Thinking(text));
                }
                if let Some(signature) = signature {
                    deltas.push(Delta::Signature(signature));
                }
                BlockKind::Thinking
            }
            Part::RedactedThinking { data } => BlockKind::RedactedThinking { data },
            Part::ToolCall { id, name, arguments } => {
                // Sent at the block's end unless deltas bring the input (an empty object too:
                // a call without arguments still has JSON arguments).
                self.pending_input = Some((index, arguments));
                BlockKind::ToolCall { id, name }
            }
            Part::Image { .. } | Part::ToolResult { .. } => {
                return Err(ir::DecodeError(
                    "content_block_start: an answer cannot hold image or tool_result blocks".to_owned(),
                ));
            }
        };
        out.push(StreamEvent::BlockStart { index, kind });
        out.extend(
            deltas
                .into_iter()
                .map(|delta| StreamEvent::Delta { index, delta }),
        );
        Ok(())
    }
}

/// The block being written: its index in the canonical stream and on the wire.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    source: usize,
    index: usize,
}

/// Canonical stream events → Anthropic SSE.
///
/// Writes `message_start` (synthesized before the first block if `Start` never came; its
/// usage is what is known then, zeros otherwise), content blocks numbered from 0 (an open
/// block is stopped before the next starts), then `message_delta` with the stop reason and
/// the usage, and `message_stop`. `Finish` is held until `Usage` or `Done` arrives (OpenAI
/// reports usage after the finish reason), so the single `message_delta` carries both.
/// `Error` writes an `error` event; nothing is written after it or after `message_stop`.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    started: bool,
    closed: bool,
    open: Option<OpenBlock>,
    next_index: usize,
    stop: Option<StopReason>,
    usage: Option<ir::Usage>,
}

impl StreamEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => self.start(id, model, out),
            StreamEvent::BlockStart { index, kind } => self.open_block(*index, kind, out),
            StreamEvent::Delta { index, delta } => self.delta(*index, delta, out),
            StreamEvent::BlockStop { index } => {
                if self.open.is_some_and(|b| b.source == *index) {
                    self.close_block(out);
                }
            }
            StreamEvent::Finish { stop } => {
                self.start("", "", out);
                self.close_block(out);
                self.stop = Some(stop.clone());
                if self.usage.is_some() {
                    self.finish(out);
                }
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(*usage);
                if self.stop.is_some() {
                    self.finish(out);
                }
            }
            StreamEvent::Error(err) => {
                error_event(err, out);
                self.closed = true;
            }
            StreamEvent::Done => {
                self.start("", "", out);
                self.close_block(out);
                self.finish(out);
            }
        }
    }

    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = usage_to_wire(&self.usage.unwrap_or_default());
        emit(
            out,
            &StreamOut::MessageStart {
                message: MessageBody {
                    id,
                    kind: "message",
                    role: "assistant",
                    model,
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage,
                },
            },
        );
    }

    fn open_block(&mut self, source: usize, kind: &BlockKind, out: &mut BytesMut) {
        self.start("", "", out);
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        let content_block = match kind {
            BlockKind::Text => text_block("", None),
            BlockKind::Thinking => Block::Thinking(ThinkingBlock {
                thinking: Cow::Borrowed(""),
                signature: None,
            }),
            BlockKind::RedactedThinking { data } => Block::RedactedThinking(RedactedThinkingBlock {
                data: Cow::Borrowed(data),
            }),
            BlockKind::ToolCall { id, name } => tool_use_block(id, name, ToolInput::Empty),
        };
        emit(out, &StreamOut::ContentBlockStart { index, content_block });
        self.open = Some(OpenBlock { source, index });
    }

    fn delta(&mut self, source: usize, delta: &Delta, out: &mut BytesMut) {
        let index = match self.open {
            Some(b) if b.source == source => b.index,
            // A delta without its block start: text and thinking can start one.
            _ => {
                let kind = match delta {
                    Delta::Text(_) => BlockKind::Text,
                    Delta::Thinking(_) => BlockKind::Thinking,
                    Delta::Signature(_) | Delta::ToolArguments(_) => return,
                };
                self.open_block(source, &kind, out);
                self.next_index - 1
            }
        };
        let delta = match delta {
            Delta::Text(text) => DeltaWire::TextDelta {
                text: Cow::Borrowed(text),
            },
            Delta::Thinking(thinking) => DeltaWire::ThinkingDelta {
                thinking: Cow::Borrowed(thinking),
            },
            Delta::Signature(signature) => DeltaWire::SignatureDelta {
                signature: Cow::Borrowed(signature),
            },
            Delta::ToolArguments(partial_json) => DeltaWire::InputJsonDelta {
                partial_json: Cow::Borrowed(partial_json),
            },
        };
        emit(out, &StreamOut::ContentBlockDelta { index, delta });
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.open.take() {
            emit(out, &StreamOut::ContentBlockStop { index: block.index });
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        let end_turn = StopReason::EndTurn;
        let (stop_reason, stop_sequence) = stop_to_wire(self.stop.as_ref().unwrap_or(&end_turn));
        emit(
            out,
            &StreamOut::MessageDelta {
                delta: StopOut {
                    stop_reason,
                    stop_sequence,
                },
                usage: usage_to_wire(&self.usage.unwrap_or_default()),
            },
        );
        emit(out, &StreamOut::MessageStop);
        self.closed = true;
    }
}

/// The `error` event that ends an Anthropic stream: the one way it is written.
pub fn error_event(err: &ir::ErrorInfo, out: &mut BytesMut) {
    let (_, kind) = error_wire(err);
    emit(
        out,
        &StreamOut::Error {
            error: ErrorOut {
                kind,
                message: &err.message,
            },
        },
    );
}

fn emit(out: &mut BytesMut, event: &StreamOut<'_>) {
    // Cannot fail (see `to_bytes`).
    if let Ok(data) = serde_json::to_string(event) {
        write_event(out, Some(event.name()), &data);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::formats::sse::{SseFramer, parse_events};

    fn text(s: &str) -> Part {
        Part::Text {
            text: s.into(),
            cache_control: None,
        }
    }

    fn ephemeral() -> Option<Value> {
        Some(json!({"type": "ephemeral"}))
    }

    fn user(parts: Vec<Part>) -> ir::Message {
        ir::Message {
            role: ir::Role::User,
            parts,
        }
    }

    fn assistant(parts: Vec<Part>) -> ir::Message {
        ir::Message {
            role: ir::Role::Assistant,
            parts,
        }
    }

    fn call(id: &str, arguments: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: "get_weather".into(),
            arguments: arguments.into(),
        }
    }

    /// Encodes for `claude-x`; the body as JSON and the dropped names.
    fn encode(req: &ir::ChatRequest) -> (Value, Vec<String>) {
        let mut dropped = ir::Dropped::default();
        let body = encode_request(req, "claude-x", &mut dropped);
        (serde_json::from_slice(&body).unwrap(), dropped.names().to_vec())
    }

    fn simple_request() -> ir::ChatRequest {
        ir::ChatRequest {
            model: "claude-x".into(),
            messages: vec![user(vec![text("hi")])],
            max_tokens: Some(100),
            ..Default::default()
        }
    }

    const FULL_REQUEST: &str = r#"{
      "model": "claude-sonnet-4-5",
      "max_tokens": 2048,
      "system": [
        {"type": "text", "text": "You are a weather bot."},
        {"type": "text", "text": "Long cached instructions.", "cache_control": {"type": "ephemeral"}}
      ],
      "messages": [
        {"role": "user", "content": "Weather in Paris and Berlin?"},
        {"role": "assistant", "content": [
          {"type": "thinking", "thinking": "Two cities, two calls.", "signature": "EqQBCgIYAhIMzX1v+9g=="},
          {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
          {"type": "text", "text": "Checking both."},
          {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "Paris", "unit": "celsius"}},
          {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"unit":"celsius","location":"Berlin"}}
        ]},
        {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C, sunny"},
          {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "station offline"}],
           "is_error": true, "cache_control": {"type": "ephemeral"}},
          {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
          {"type": "image", "source": {"type": "url", "url": "https://example.com/map.jpg"},
           "cache_control": {"type": "ephemeral", "ttl": "1h"}},
          {"type": "text", "text": "And this map?", "cache_control": {"type": "ephemeral"}}
        ]}
      ],
      "tools": [{"name": "get_weather", "description": "Current weather",
                 "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
                 "cache_control": {"type": "ephemeral"}}],
      "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
      "thinking": {"type": "enabled", "budget_tokens": 1024},
      "stop_sequences": ["\n\nHuman:"],
      "temperature": 0.7,
      "top_p": 0.9,
      "top_k": 40,
      "metadata": {"user_id": "user-123"},
      "stream": true,
      "service_tier": "auto",
      "container": "container_abc"
    }"#;

    fn full_request_ir() -> ir::ChatRequest {
        ir::ChatRequest {
            model: "claude-sonnet-4-5".into(),
            system: vec![
                ir::SystemBlock {
                    text: "You are a weather bot.".into(),
                    cache_control: None,
                },
                ir::SystemBlock {
                    text: "Long cached instructions.".into(),
                    cache_control: ephemeral(),
                },
            ],
            messages: vec![
                user(vec![text("Weather in Paris and Berlin?")]),
                assistant(vec![
                    Part::Thinking {
                        text: "Two cities, two calls.".into(),
                        signature: Some("EqQBCgIYAhIMzX1v+9g==".into()),
                    },
                    Part::RedactedThinking {
                        data: "EmwKAhgBEgy3va3pzix/LafPsn4a".into(),
                    },
                    text("Checking both."),
                    call("toolu_01", r#"{"location": "Paris", "unit": "celsius"}"#),
                    call("toolu_02", r#"{"unit":"celsius","location":"Berlin"}"#),
                ]),
                user(vec![
                    Part::ToolResult {
                        call_id: "toolu_01".into(),
                        content: vec![text("18°C, sunny")],
                        is_error: false,
                        cache_control: None,
                    },
                    Part::ToolResult {
                        call_id: "toolu_02".into(),
                        content: vec![text("station offline")],
                        is_error: true,
                        cache_control: ephemeral(),
                    },
                    Part::Image {
                        source: ir::ImageSource::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBORw0KGgo=".into(),
                        },
                        cache_control: None,
                    },
                    Part::Image {
                        source: ir::ImageSource::Url("https://example.com/map.jpg".into()),
                        cache_control: Some(json!({"type": "ephemeral", "ttl": "1h"})),
                    },
                    Part::Text {
                        text: "And this map?".into(),
                        cache_control: ephemeral(),
                    },
                ]),
            ],
            tools: vec![ir::Tool {
                name: "get_weather".into(),
                description: Some("Current weather".into()),
                parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
                cache_control: ephemeral(),
            }],
            tool_choice: Some(ir::ToolChoice::Auto),
            parallel_tool_calls: Some(false),
            max_tokens: Some(2048),
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(40),
            stop: vec!["\n\nHuman:".into()],
            stream: true,
            include_usage: false,
            response_format: None,
            thinking: Some(ir::Thinking {
                budget_tokens: Some(1024),
            }),
            reasoning_effort: None,
            user: Some("user-123".into()),
            extra: vec![
                ("service_tier".into(), json!("auto")),
                ("container".into(), json!("container_abc")),
            ],
        }
    }

    #[test]
    fn decodes_every_request_feature() {
        assert_eq!(
            decode_request(FULL_REQUEST.as_bytes()).unwrap(),
            full_request_ir()
        );
    }

    #[test]
    fn anthropic_request_survives_the_canonical_model() {
        let ir = decode_request(FULL_REQUEST.as_bytes()).unwrap();
        let mut dropped = ir::Dropped::default();
        let body = encode_request(&ir, "claude-sonnet-4-5", &mut dropped);
        assert!(dropped.is_empty(), "{dropped:?}");

        // Tool input is carried byte for byte, key order and blanks included.
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains(r#""input":{"location": "Paris", "unit": "celsius"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""input":{"unit":"celsius","location":"Berlin"}"#),
            "{text}"
        );

        let mut want: Value = serde_json::from_str(FULL_REQUEST).unwrap();
        // String contents come back as one text block.
        want["messages"][0]["content"] = json!([{"type": "text", "text": "Weather in Paris and Berlin?"}]);
        want["messages"][2]["content"][0]["content"] = json!([{"type": "text", "text": "18°C, sunny"}]);
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn canonical_requests_round_trip() {
        let adaptive = ir::ChatRequest {
            thinking: Some(ir::Thinking { budget_tokens: None }),
            ..simple_request()
        };
        let required = ir::ChatRequest {
            tools: full_request_ir().tools,
            tool_choice: Some(ir::ToolChoice::Required),
            parallel_tool_calls: Some(true),
            ..simple_request()
        };
        let named = ir::ChatRequest {
            tool_choice: Some(ir::ToolChoice::Tool("get_weather".into())),
            parallel_tool_calls: None,
            ..required.clone()
        };
        let none = ir::ChatRequest {
            tool_choice: Some(ir::ToolChoice::None),
            parallel_tool_calls: None,
            ..required.clone()
        };
        let conversation = ir::ChatRequest {
            system: vec![ir::SystemBlock {
                text: "Be brief.".into(),
                cache_control: None,
            }],
            messages: vec![
                user(vec![text("hi")]),
                assistant(vec![text("hello")]),
                user(vec![text("again"), text("and again")]),
                assistant(vec![text("{")]),
            ],
            stop: vec!["END".into(), "STOP".into()],
            ..simple_request()
        };
        for (name, req) in [
            ("full", full_request_ir()),
            ("simple", simple_request()),
            ("adaptive", adaptive),
            ("required", required),
            ("named", named),
            ("none", none),
            ("conversation", conversation),
        ] {
            let mut dropped = ir::Dropped::default();
            let body = encode_request(&req, &req.model, &mut dropped);
            assert!(dropped.is_empty(), "{name}: {dropped:?}");
            assert_eq!(decode_request(&body).unwrap(), req, "{name}");
        }
    }

    #[test]
    fn decodes_request_variants() {
        let base = |extra: &str| {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            decode_request(body.as_bytes()).unwrap()
        };
        let r = base(r#","system":"Be brief.""#);
        assert_eq!(
            r.system,
            [ir::SystemBlock {
                text: "Be brief.".into(),
                cache_control: None
            }]
        );
        for extra in [r#","system":"""#, r#","system":null"#, r#","system":[]"#] {
            assert!(base(extra).system.is_empty(), "{extra}");
        }
        let r =
            base(r#","tools":null,"stop_sequences":null,"metadata":null,"stream":false,"temperature":null"#);
        assert_eq!(r, base(""));
        assert_eq!(r.max_tokens, None);

        let choices = [
            (r#"{"type":"auto"}"#, Some(ir::ToolChoice::Auto), None),
            (
                r#"{"type":"any","disable_parallel_tool_use":false}"#,
                Some(ir::ToolChoice::Required),
                Some(true),
            ),
            (
                r#"{"type":"tool","name":"f","disable_parallel_tool_use":true}"#,
                Some(ir::ToolChoice::Tool("f".into())),
                Some(false),
            ),
            (r#"{"type":"none"}"#, Some(ir::ToolChoice::None), None),
            ("null", None, None),
        ];
        for (wire, choice, parallel) in choices {
            let r = base(&format!(r#","tool_choice":{wire}"#));
            assert_eq!(
                (r.tool_choice, r.parallel_tool_calls),
                (choice, parallel),
                "{wire}"
            );
        }

        let thinking = [
            (r#"{"type":"enabled","budget_tokens":2000}"#, Some(Some(2000))),
            (r#"{"type":"adaptive"}"#, Some(None)),
            (r#"{"type":"disabled"}"#, None),
        ];
        for (wire, want) in thinking {
            let r = base(&format!(r#","thinking":{wire}"#));
            assert_eq!(r.thinking.map(|t| t.budget_tokens), want, "{wire}");
        }

        // Unknown fields keep request order; a thinking block with an empty signature has none.
        let r = base(r#","zeta":1,"context_management":{"edits":[]},"alpha":[true]"#);
        assert_eq!(
            r.extra,
            [
                ("zeta".to_owned(), json!(1)),
                ("context_management".to_owned(), json!({"edits": []})),
                ("alpha".to_owned(), json!([true]))
            ]
        );
        let r = decode_request(
            br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":""}]},
                {"role":"user","content":""},{"role":"user","content":[{"type":"tool_result","tool_use_id":"x"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.messages,
            [
                assistant(vec![Part::Thinking {
                    text: "t".into(),
                    signature: None
                }]),
                user(vec![]),
                user(vec![Part::ToolResult {
                    call_id: "x".into(),
                    content: vec![],
                    is_error: false,
                    cache_control: None
                }]),
            ]
        );
    }

    #[test]
    fn refuses_bad_requests_with_a_clear_message() {
        let msg =
            |content: &str| format!(r#"{{"model":"m","messages":[{{"role":"user","content":{content}}}]}}"#);
        let with = |extra: &str| format!(r#"{{"model":"m","messages":[],{extra}}}"#);
        let cases: Vec<(String, &str, Option<&str>)> = vec![
            ("not json".into(), "not a valid JSON object", None),
            ("[1]".into(), "not a valid JSON object", None),
            (
                r#"{"model":"a","model":"b","messages":[]}"#.into(),
                "duplicate key \"model\"",
                None,
            ),
            (
                r#"{"messages":[]}"#.into(),
                "you must provide a model",
                Some("model"),
            ),
            (
                r#"{"model":"","messages":[]}"#.into(),
                "model must not be empty",
                Some("model"),
            ),
            (
                r#"{"model":7,"messages":[]}"#.into(),
                "model: invalid type",
                Some("model"),
            ),
            (
                r#"{"model":"m"}"#.into(),
                "messages: field required",
                Some("messages"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#.into(),
                "messages.0: unknown variant `system`",
                Some("messages"),
            ),
            (
                msg("5"),
                "messages.0.content: must be a string or an array",
                Some("messages"),
            ),
            (
                msg(r#"[{"type":"document","source":{"type":"text","data":"x"}}]"#),
                "messages.0.content.0: content block type `document` cannot be translated",
                Some("messages"),
            ),
            (
                msg(
                    r#"[{"type":"text","text":"a"},{"type":"image","source":{"type":"file","file_id":"f"}}]"#,
                ),
                "messages.0.content.1: unknown variant `file`",
                Some("messages"),
            ),
            (
                msg(r#"[{"type":"text"}]"#),
                "missing field `text`",
                Some("messages"),
            ),
            (msg(r#"[{"text":"a"}]"#), "missing field `type`", Some("messages")),
            (
                msg(r#"[{"type":"tool_result","tool_use_id":"t","content":[{"type":"search_result"}]}]"#),
                "messages.0.content.0: content.0: content block type `search_result`",
                Some("messages"),
            ),
            (
                msg(
                    r#"[{"type":"tool_result","tool_use_id":"t","content":[{"type":"thinking","thinking":"x"}]}]"#,
                ),
                "a tool result holds text and image blocks only",
                Some("messages"),
            ),
            (
                with(r#""tools":[{"type":"web_search_20250305","name":"web_search"}]"#),
                "tools.0: tool type `web_search_20250305` is an Anthropic server tool",
                Some("tools"),
            ),
            (
                with(r#""tools":[{"name":"f"}]"#),
                "tools.0: missing field `input_schema`",
                Some("tools"),
            ),
            (
                with(r#""max_tokens":"many""#),
                "max_tokens: invalid type",
                Some("max_tokens"),
            ),
            (with(r#""stream":"yes""#), "stream: invalid type", Some("stream")),
            (
                with(r#""metadata":{"user_id":"u","tier":"gold"}"#),
                "metadata: unknown field `tier`",
                Some("metadata"),
            ),
            (
                with(r#""thinking":{"type":"enabled"}"#),
                "thinking: missing field `budget_tokens`",
                Some("thinking"),
            ),
            (
                with(r#""tool_choice":{"type":"sometimes"}"#),
                "tool_choice: unknown variant `sometimes`",
                Some("tool_choice"),
            ),
            (
                with(r#""system":[{"type":"image","source":{"type":"url","url":"https://x"}}]"#),
                "system.0: system prompt blocks must be text blocks",
                Some("system"),
            ),
        ];
        for (body, want, param) in cases {
            let err = decode_request(body.as_bytes()).unwrap_err();
            assert!(err.message.contains(want), "{body}: {err:?}");
            assert!(!err.message.contains(" at line "), "{body}: {err:?}");
            assert_eq!(err.param, param, "{body}");
        }
    }

    #[test]
    fn encodes_defaults_and_thinking_room() {
        let (body, dropped) = encode(&ir::ChatRequest {
            max_tokens: None,
            stream: true,
            include_usage: true,
            ..simple_request()
        });
        assert_eq!(
            body,
            json!({"model": "claude-x", "max_tokens": DEFAULT_MAX_TOKENS, "stream": true,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
        assert!(dropped.is_empty());

        let cases = [
            // (max_tokens, budget) → max_tokens sent
            (None, Some(8000), 8000 + DEFAULT_MAX_TOKENS),
            (None, Some(2000), DEFAULT_MAX_TOKENS),
            (None, None, DEFAULT_MAX_TOKENS),
            (Some(1000), Some(2000), 1000),
        ];
        for (max_tokens, budget, want) in cases {
            let (body, _) = encode(&ir::ChatRequest {
                max_tokens,
                thinking: Some(ir::Thinking {
                    budget_tokens: budget,
                }),
                ..simple_request()
            });
            assert_eq!(body["max_tokens"], want, "{max_tokens:?} {budget:?}");
            let thinking = match budget {
                Some(b) => json!({"type": "enabled", "budget_tokens": b}),
                None => json!({"type": "adaptive"}),
            };
            assert_eq!(body["thinking"], thinking);
        }
    }

    #[test]
    fn reasoning_effort_becomes_a_thinking_budget() {
        // (effort, max_tokens, thinking budget) → thinking sent, dropped
        type Case = (
            &'static str,
            Option<u32>,
            Option<u32>,
            Value,
            &'static [&'static str],
        );
        let cases: [Case; 7] = [
            (
                "low",
                None,
                None,
                json!({"type": "enabled", "budget_tokens": 1024}),
                &[],
            ),
            (
                "medium",
                None,
                None,
                json!({"type": "enabled", "budget_tokens": 2048}),
                &[],
            ),
            (
                "high",
                Some(3000),
                None,
                json!({"type": "enabled", "budget_tokens": 1500}),
                &[],
            ),
            ("medium", Some(1500), None, Value::Null, &["reasoning_effort"]),
            ("none", None, None, Value::Null, &[]),
            ("turbo", None, None, Value::Null, &["reasoning_effort"]),
            (
                "high",
                None,
                Some(5000),
                json!({"type": "enabled", "budget_tokens": 5000}),
                &["reasoning_effort"],
            ),
        ];
        for (effort, max_tokens, budget, want, want_dropped) in cases {
            let (body, dropped) = encode(&ir::ChatRequest {
                max_tokens,
                reasoning_effort: Some(effort.into()),
                thinking: budget.map(|b| ir::Thinking {
                    budget_tokens: Some(b),
                }),
                ..simple_request()
            });
            assert_eq!(body["thinking"], want, "{effort} {max_tokens:?}");
            assert_eq!(dropped, want_dropped, "{effort} {max_tokens:?}");
        }
    }

    #[test]
    fn reports_what_anthropic_cannot_express() {
        let cases: Vec<(&str, ir::ChatRequest, &[&str])> = vec![
            (
                "json schema",
                ir::ChatRequest {
                    response_format: Some(ir::ResponseFormat::JsonSchema {
                        name: "w".into(),
                        schema: json!({"type": "object"}),
                        strict: Some(true),
                    }),
                    ..simple_request()
                },
                &["response_format"],
            ),
            (
                "json object",
                ir::ChatRequest {
                    response_format: Some(ir::ResponseFormat::JsonObject),
                    ..simple_request()
                },
                &["response_format"],
            ),
            (
                "text format",
                ir::ChatRequest {
                    response_format: Some(ir::ResponseFormat::Text),
                    ..simple_request()
                },
                &[],
            ),
            (
                "openai extras",
                ir::ChatRequest {
                    extra: vec![
                        ("logprobs".into(), json!(true)),
                        ("top_logprobs".into(), json!(3)),
                        ("n".into(), json!(2)),
                        ("seed".into(), json!(7)),
                        ("presence_penalty".into(), json!(0.5)),
                        ("metadata".into(), json!({"team": "a"})),
                        ("service_tier".into(), json!("flex")),
                    ],
                    ..simple_request()
                },
                &[
                    "logprobs",
                    "top_logprobs",
                    "n",
                    "seed",
                    "presence_penalty",
                    "metadata",
                    "service_tier",
                ],
            ),
            (
                "defaults ask for nothing",
                ir::ChatRequest {
                    extra: vec![
                        ("n".into(), json!(1)),
                        ("logprobs".into(), json!(false)),
                        ("frequency_penalty".into(), json!(0)),
                        ("presence_penalty".into(), json!(0.0)),
                        ("stream_options".into(), json!({"include_usage": true})),
                        ("seed".into(), Value::Null),
                    ],
                    ..simple_request()
                },
                &[],
            ),
            (
                "hot temperature",
                ir::ChatRequest {
                    temperature: Some(1.5),
                    ..simple_request()
                },
                &["temperature"],
            ),
            (
                "unsigned thinking",
                ir::ChatRequest {
                    messages: vec![
                        user(vec![text("hi")]),
                        assistant(vec![
                            Part::Thinking {
                                text: "hmm".into(),
                                signature: None,
                            },
                            text("hello"),
                        ]),
                    ],
                    ..simple_request()
                },
                &["thinking"],
            ),
            (
                "tool result with a call inside",
                ir::ChatRequest {
                    messages: vec![user(vec![Part::ToolResult {
                        call_id: "c".into(),
                        content: vec![text("ok"), call("d", "{}")],
                        is_error: false,
                        cache_control: None,
                    }])],
                    ..simple_request()
                },
                &["tool_result_content"],
            ),
            (
                "cache marker on empty text",
                ir::ChatRequest {
                    messages: vec![user(vec![
                        text("hi"),
                        Part::Text {
                            text: String::new(),
                            cache_control: ephemeral(),
                        },
                    ])],
                    ..simple_request()
                },
                &["cache_control"],
            ),
        ];
        for (name, req, want) in cases {
            assert_eq!(encode(&req).1, want, "{name}");
        }

        let (body, _) = encode(&ir::ChatRequest {
            temperature: Some(1.5),
            extra: vec![
                ("service_tier".into(), json!("standard_only")),
                ("output_config".into(), json!({"effort": "low"})),
            ],
            ..simple_request()
        });
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["service_tier"], "standard_only");
        assert_eq!(body["output_config"], json!({"effort": "low"}));
    }

    #[test]
    fn encodes_openai_shaped_conversations() {
        let req = ir::ChatRequest {
            system: vec![
                ir::SystemBlock {
                    text: String::new(),
                    cache_control: None,
                },
                ir::SystemBlock {
                    text: "sys".into(),
                    cache_control: None,
                },
            ],
            messages: vec![
                user(vec![text("weather?")]),
                // An assistant turn with empty content and calls, arguments as OpenAI streams them.
                assistant(vec![
                    text(""),
                    call("a", ""),
                    call("b", "not json"),
                    call("c", "[1,2]"),
                    call("d", " {\"b\":1,\"a\":2} "),
                ]),
                user(vec![Part::ToolResult {
                    call_id: "a".into(),
                    content: vec![],
                    is_error: false,
                    cache_control: None,
                }]),
                assistant(vec![text("")]),
            ],
            tools: vec![ir::Tool {
                name: "get_weather".into(),
                description: None,
                parameters: Value::Null,
                cache_control: None,
            }],
            parallel_tool_calls: Some(false),
            user: Some("u1".into()),
            ..simple_request()
        };
        let mut dropped = ir::Dropped::default();
        let bytes = encode_request(&req, "claude-x", &mut dropped);
        assert!(dropped.is_empty(), "{dropped:?}");
        assert!(
            std::str::from_utf8(&bytes)
                .unwrap()
                .contains(r#""input":{"b":1,"a":2}"#)
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let tool_use = |id: &str, input: Value| json!({"type": "tool_use", "id": id, "name": "get_weather", "input": input});
        assert_eq!(
            body,
            json!({
                "model": "claude-x",
                "max_tokens": 100,
                "system": [{"type": "text", "text": "sys"}],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                    {"role": "assistant", "content": [
                        tool_use("a", json!({})), tool_use("b", json!({})), tool_use("c", json!({})),
                        tool_use("d", json!({"a": 2, "b": 1})),
                    ]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]},
                ],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "u1"},
            })
        );

        // A choice without tools says nothing Anthropic would accept.
        for choice in [ir::ToolChoice::Auto, ir::ToolChoice::None] {
            let (body, dropped) = encode(&ir::ChatRequest {
                tool_choice: Some(choice),
                parallel_tool_calls: Some(false),
                ..simple_request()
            });
            assert!(body.get("tool_choice").is_none());
            assert!(dropped.is_empty());
        }
    }

    const RESPONSE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
        "model":"claude-sonnet-4-5-20250929","content":[
          {"type":"thinking","thinking":"Need the tool.","signature":"WaUjzkypQ2mUEVM36O2Txu"},
          {"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"},
          {"type":"text","text":"Let me check.","citations":null},
          {"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"unit":"c","location":"Paris"}}],
        "stop_reason":"tool_use","stop_sequence":null,
        "usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,
                 "output_tokens":30,"service_tier":"standard"}}"#;

    fn response_ir() -> ir::ChatResponse {
        ir::ChatResponse {
            id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
            model: "claude-sonnet-4-5-20250929".into(),
            parts: vec![
                Part::Thinking {
                    text: "Need the tool.".into(),
                    signature: Some("WaUjzkypQ2mUEVM36O2Txu".into()),
                },
                Part::RedactedThinking {
                    data: "EmwKAhgBEgy3va3pzix".into(),
                },
                text("Let me check."),
                Part::ToolCall {
                    id: "toolu_01".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"unit":"c","location":"Paris"}"#.into(),
                },
            ],
            stop: StopReason::ToolUse,
            usage: ir::Usage {
                input_tokens: 2112,
                output_tokens: 30,
                cached_input_tokens: 2000,
                cache_creation_tokens: 100,
                reasoning_tokens: 0,
            },
            created: None,
        }
    }

    #[test]
    fn decodes_and_encodes_responses() {
        assert_eq!(decode_response(RESPONSE.as_bytes()).unwrap(), response_ir());

        let mut dropped = ir::Dropped::default();
        let body = encode_response(&response_ir(), &mut dropped);
        assert!(dropped.is_empty());
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains(r#""input":{"unit":"c","location":"Paris"}"#)
        );
        let mut want: Value = serde_json::from_str(RESPONSE).unwrap();
        want["content"][2].as_object_mut().unwrap().remove("citations");
        want["usage"].as_object_mut().unwrap().remove("service_tier");
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), want);
        assert_eq!(decode_response(&body).unwrap(), response_ir());
    }

    #[test]
    fn responses_from_other_providers_fit_the_anthropic_shape() {
        let resp = ir::ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4o".into(),
            parts: vec![
                Part::Thinking {
                    text: "r".into(),
                    signature: None,
                },
                text("a"),
                Part::Image {
                    source: ir::ImageSource::Url("https://x/y.png".into()),
                    cache_control: None,
                },
            ],
            stop: StopReason::StopSequence(Some("END".into())),
            usage: ir::Usage {
                input_tokens: 50,
                output_tokens: 20,
                cached_input_tokens: 30,
                cache_creation_tokens: 0,
                reasoning_tokens: 5,
            },
            created: Some(1_700_000_000),
        };
        let mut dropped = ir::Dropped::default();
        let body: Value = serde_json::from_slice(&encode_response(&resp, &mut dropped)).unwrap();
        assert_eq!(dropped.names(), ["image"]);
        assert_eq!(
            body,
            json!({
                "id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-4o",
                "content": [{"type": "thinking", "thinking": "r", "signature": ""}, {"type": "text", "text": "a"}],
                "stop_reason": "stop_sequence", "stop_sequence": "END",
                "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 30,
                          "output_tokens": 20}
            })
        );
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        let cases = [
            ("end_turn", None, StopReason::EndTurn),
            ("max_tokens", None, StopReason::MaxTokens),
            (
                "stop_sequence",
                Some("###"),
                StopReason::StopSequence(Some("###".into())),
            ),
            ("tool_use", None, StopReason::ToolUse),
            ("pause_turn", None, StopReason::Other("pause_turn".into())),
            ("refusal", None, StopReason::Other("refusal".into())),
        ];
        for (reason, sequence, want) in cases {
            let body = json!({"id": "m", "type": "message", "model": "c", "content": [],
                              "stop_reason": reason, "stop_sequence": sequence, "usage": {}});
            let resp = decode_response(body.to_string().as_bytes()).unwrap();
            assert_eq!(resp.stop, want, "{reason}");
            assert_eq!(stop_to_wire(&want), (reason, sequence));
        }
        assert_eq!(stop_to_wire(&StopReason::ContentFilter), ("refusal", None));
        assert_eq!(stop_from_wire(None, None), StopReason::EndTurn);
    }

    #[test]
    fn usage_counts_cache_tokens_as_input() {
        let cases = [
            // (input, creation, read, output) on the wire ⇄ canonical
            (
                (100, 0, 0, 5),
                ir::Usage {
                    input_tokens: 100,
                    output_tokens: 5,
                    ..Default::default()
                },
            ),
            (
                (12, 100, 2000, 30),
                ir::Usage {
                    input_tokens: 2112,
                    output_tokens: 30,
                    cached_input_tokens: 2000,
                    cache_creation_tokens: 100,
                    reasoning_tokens: 0,
                },
            ),
            (
                (0, 0, 4096, 1),
                ir::Usage {
                    input_tokens: 4096,
                    output_tokens: 1,
                    cached_input_tokens: 4096,
                    ..Default::default()
                },
            ),
        ];
        for ((input, creation, read, output), want) in cases {
            let wire = UsageIn {
                input_tokens: Some(input),
                cache_creation_input_tokens: Some(creation),
                cache_read_input_tokens: Some(read),
                output_tokens: Some(output),
            };
            assert_eq!(usage_from_wire(&wire), want);
            let back = usage_to_wire(&want);
            assert_eq!(
                (
                    back.input_tokens,
                    back.cache_creation_input_tokens,
                    back.cache_read_input_tokens,
                    back.output_tokens
                ),
                (input, creation, read, output)
            );
        }
        // Absent or null fields are zero; a count that disagrees with itself never underflows.
        let sparse: UsageIn =
            serde_json::from_str(r#"{"output_tokens":3,"cache_read_input_tokens":null}"#).unwrap();
        assert_eq!(
            usage_from_wire(&sparse),
            ir::Usage {
                output_tokens: 3,
                ..Default::default()
            }
        );
        let odd = ir::Usage {
            input_tokens: 5,
            cached_input_tokens: 10,
            ..Default::default()
        };
        assert_eq!(usage_to_wire(&odd).input_tokens, 0);
    }

    #[test]
    fn decodes_provider_errors() {
        let anthropic = |kind: &str, message: &str| {
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
                .to_string()
        };
        let cases: Vec<(u16, String, ErrorKind, u16, &str)> = vec![
            (
                529,
                anthropic("overloaded_error", "Overloaded"),
                ErrorKind::Overloaded,
                529,
                "Overloaded",
            ),
            (
                429,
                anthropic(
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                ),
                ErrorKind::RateLimit,
                429,
                "per-minute rate limit",
            ),
            (
                401,
                anthropic("authentication_error", "invalid x-api-key"),
                ErrorKind::Authentication,
                401,
                "invalid x-api-key",
            ),
            (
                400,
                anthropic("invalid_request_error", "max_tokens: Field required"),
                ErrorKind::InvalidRequest,
                400,
                "max_tokens: Field required",
            ),
            (
                404,
                anthropic("not_found_error", "model: claude-9"),
                ErrorKind::NotFound,
                404,
                "model: claude-9",
            ),
            (
                402,
                anthropic("billing_error", "credit balance is too low"),
                ErrorKind::Permission,
                402,
                "credit balance",
            ),
            (
                504,
                anthropic("timeout_error", "Request timed out"),
                ErrorKind::Timeout,
                504,
                "timed out",
            ),
            (
                500,
                anthropic("api_error", "Internal server error"),
                ErrorKind::Server,
                500,
                "Internal server error",
            ),
            // The type wins over a status that says less.
            (
                200,
                anthropic("overloaded_error", "Overloaded"),
                ErrorKind::Overloaded,
                529,
                "Overloaded",
            ),
            // An unknown type falls back to the status.
            (
                503,
                anthropic("brand_new_error", "hmm"),
                ErrorKind::Overloaded,
                503,
                "hmm",
            ),
            // Bodies that are not Anthropic errors are never shown.
            (
                502,
                "<html><body>502 Bad Gateway</body></html>".into(),
                ErrorKind::Server,
                502,
                "provider returned HTTP 502",
            ),
            (
                413,
                "<html>request entity too large</html>".into(),
                ErrorKind::RequestTooLarge,
                413,
                "provider returned HTTP 413",
            ),
            (
                529,
                String::new(),
                ErrorKind::Overloaded,
                529,
                "provider returned HTTP 529",
            ),
            (
                429,
                r#"{"error":"slow down"}"#.into(),
                ErrorKind::RateLimit,
                429,
                "provider returned HTTP 429",
            ),
            (
                500,
                anthropic("api_error", ""),
                ErrorKind::Server,
                500,
                "provider returned HTTP 500",
            ),
        ];
        for (status, body, kind, want_status, message) in cases {
            let info = decode_error(status, body.as_bytes());
            assert_eq!((info.kind, info.status), (kind, want_status), "{status} {body}");
            assert!(info.message.contains(message), "{status} {body}: {info:?}");
            assert!(!info.message.contains("<html>"));
        }
    }

    #[test]
    fn encodes_errors_with_anthropic_statuses() {
        let info = |kind, status| ir::ErrorInfo {
            status,
            kind,
            message: "boom".into(),
        };
        let cases = [
            (info(ErrorKind::Overloaded, 503), 529, "overloaded_error"),
            (info(ErrorKind::RateLimit, 429), 429, "rate_limit_error"),
            (info(ErrorKind::InvalidRequest, 400), 400, "invalid_request_error"),
            (info(ErrorKind::InvalidRequest, 422), 422, "invalid_request_error"),
            (info(ErrorKind::InvalidRequest, 500), 400, "invalid_request_error"),
            (info(ErrorKind::Authentication, 401), 401, "authentication_error"),
            (info(ErrorKind::Permission, 403), 403, "permission_error"),
            (info(ErrorKind::Permission, 402), 402, "billing_error"),
            (info(ErrorKind::NotFound, 404), 404, "not_found_error"),
            (info(ErrorKind::RequestTooLarge, 413), 413, "request_too_large"),
            (info(ErrorKind::Server, 502), 502, "api_error"),
            (info(ErrorKind::Server, 200), 500, "api_error"),
            (info(ErrorKind::Timeout, 504), 504, "timeout_error"),
        ];
        for (err, status, kind) in cases {
            let (got_status, body) = encode_error(&err);
            assert_eq!(got_status.as_u16(), status, "{err:?}");
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": kind, "message": "boom"}})
            );
            // And back.
            let back = decode_error(got_status.as_u16(), &serde_json::to_vec(&body).unwrap());
            assert_eq!(
                back,
                ir::ErrorInfo {
                    status,
                    ..err.clone()
                }
            );
        }
    }

    /// A recorded-shape Anthropic stream: thinking with a signature, text, then two tool calls
    /// whose input arrives split over several deltas; a ping in between.
    const STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01Wx9","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":1024,"output_tokens":3,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants the weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":" in two cities: call the tool twice."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+v2/Xm=="}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me check "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"both cities.\n"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"Par"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"is, FR\", \"unit\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":": \"celsius\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: content_block_start
data: {"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_01CH5yJ8yWFUs3zQf4U1Bz7o","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"locat"}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"ion\": \"Berlin, DE\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":3}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":189}}

event: message_stop
data: {"type":"message_stop"}

"#;

    fn stream_events() -> Vec<StreamEvent> {
        let delta = |index, delta| StreamEvent::Delta { index, delta };
        let args = |index, s: &str| StreamEvent::Delta {
            index,
            delta: Delta::ToolArguments(s.into()),
        };
        vec![
            StreamEvent::Start {
                id: "msg_01Wx9".into(),
                model: "claude-sonnet-4-5-20250929".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            delta(0, Delta::Thinking("The user wants the weather".into())),
            delta(0, Delta::Thinking(" in two cities: call the tool twice.".into())),
            delta(
                0,
                Delta::Signature("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+v2/Xm==".into()),
            ),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::Text,
            },
            delta(1, Delta::Text("Let me check ".into())),
            delta(1, Delta::Text("both cities.\n".into())),
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::ToolCall {
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into(),
                },
            },
            args(2, r#"{"location": "Par"#),
            args(2, r#"is, FR", "unit""#),
            args(2, r#": "celsius"}"#),
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::BlockStart {
                index: 3,
                kind: BlockKind::ToolCall {
                    id: "toolu_01CH5yJ8yWFUs3zQf4U1Bz7o".into(),
                    name: "get_weather".into(),
                },
            },
            args(3, r#"{"locat"#),
            args(3, r#"ion": "Berlin, DE"}"#),
            StreamEvent::BlockStop { index: 3 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(ir::Usage {
                input_tokens: 1496,
                output_tokens: 189,
                cached_input_tokens: 1024,
                cache_creation_tokens: 0,
                reasoning_tokens: 0,
            }),
            StreamEvent::Done,
        ]
    }

    /// Frames, parses and decodes a stream fed in the given chunks.
    fn decode_chunks(chunks: &[&[u8]]) -> (Vec<StreamEvent>, bool) {
        let mut framer = SseFramer::default();
        let mut decoder = StreamDecoder::new();
        let mut got = Vec::new();
        for chunk in chunks {
            if let Some(events) = framer.push(Bytes::copy_from_slice(chunk)).unwrap() {
                for event in parse_events(&events) {
                    got.extend(decoder.decode(&event).unwrap());
                }
            }
        }
        (got, decoder.is_done())
    }

    #[test]
    fn decodes_a_recorded_stream() {
        let (got, done) = decode_chunks(&[STREAM.as_bytes()]);
        assert_eq!(got, stream_events());
        assert!(done);

        // The argument fragments add up to each call's input.
        let args: String = got
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Delta {
                    index: 3,
                    delta: Delta::ToolArguments(s),
                } => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "Berlin, DE"})
        );
    }

    #[test]
    fn decodes_the_same_stream_however_the_bytes_are_split() {
        let want = stream_events();
        for stream in [STREAM.to_owned(), STREAM.replace('\n', "\r\n")] {
            let bytes = stream.as_bytes();
            for i in 0..=bytes.len() {
                assert_eq!(
                    decode_chunks(&[&bytes[..i], &bytes[i..]]),
                    (want.clone(), true),
                    "split at {i}"
                );
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(decode_chunks(&singles), (want.clone(), true));
            let sevens: Vec<&[u8]> = bytes.chunks(7).collect();
            assert_eq!(decode_chunks(&sevens), (want.clone(), true));
        }
    }

    fn decode_all(stream: &str) -> (Vec<StreamEvent>, bool) {
        decode_chunks(&[stream.as_bytes()])
    }

    #[test]
    fn stream_errors_end_the_stream() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",",
            "\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (got, done) = decode_all(stream);
        assert_eq!(
            got,
            [
                StreamEvent::Start {
                    id: "m".into(),
                    model: "c".into()
                },
                StreamEvent::Error(ir::ErrorInfo {
                    status: 529,
                    kind: ErrorKind::Overloaded,
                    message: "Overloaded".into()
                }),
            ]
        );
        assert!(!done, "an error is no normal end");
    }

    #[test]
    fn decoder_edge_cases() {
        // Whole input at the start and no deltas; unknown events and deltas are skipped;
        // a stream without message_delta still finishes with the usage it had.
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",",
            "\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,",
            "\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{\"b\":1,\"a\":[2]}}}\n\n",
            "event: brand_new_event\ndata: {\"type\":\"brand_new_event\",\"x\":1}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,",
            "\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,",
            "\"delta\":{\"type\":\"citations_delta\",\"citation\":{}}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,",
            "\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"opaque\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (got, done) = decode_all(stream);
        assert!(done);
        assert_eq!(
            got,
            [
                StreamEvent::Start {
                    id: "m".into(),
                    model: "c".into()
                },
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::ToolCall {
                        id: "t".into(),
                        name: "f".into()
                    }
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::ToolArguments(r#"{"b":1,"a":[2]}"#.into())
                },
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::BlockStart {
                    index: 1,
                    kind: BlockKind::Text
                },
                StreamEvent::Delta {
                    index: 1,
                    delta: Delta::Text("Hi".into())
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::BlockStart {
                    index: 2,
                    kind: BlockKind::RedactedThinking {
                        data: "opaque".into()
                    }
                },
                StreamEvent::BlockStop { index: 2 },
                StreamEvent::Finish {
                    stop: StopReason::EndTurn
                },
                StreamEvent::Usage(ir::Usage {
                    input_tokens: 7,
                    output_tokens: 1,
                    cache_creation_tokens: 2,
                    ..Default::default()
                }),
                StreamEvent::Done,
            ]
        );

        // Usage reported cumulatively in message_delta wins over message_start's.
        let mut decoder = StreamDecoder::new();
        let event = |data: &str| SseEvent {
            event: None,
            data: data.into(),
        };
        decoder
            .decode(&event(
                r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            ))
            .unwrap();
        let got = decoder
            .decode(&event(
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":9,"cache_read_input_tokens":4,"output_tokens":50}}"#,
            ))
            .unwrap();
        assert_eq!(
            got,
            [
                StreamEvent::Finish {
                    stop: StopReason::MaxTokens
                },
                StreamEvent::Usage(ir::Usage {
                    input_tokens: 13,
                    output_tokens: 50,
                    cached_input_tokens: 4,
                    ..Default::default()
                })
            ]
        );

        // Broken or untranslatable events are errors, not silence.
        for data in [
            "{not json",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
        ] {
            let err = StreamDecoder::new().decode(&event(data)).unwrap_err();
            assert!(
                err.0.starts_with("invalid Anthropic stream event") || err.0.contains("server_tool_use"),
                "{err}"
            );
        }
        // A ping with no data, or with data, is nothing.
        let ping = SseEvent {
            event: Some("ping".into()),
            data: String::new(),
        };
        assert!(StreamDecoder::new().decode(&ping).unwrap().is_empty());
        assert!(
            StreamDecoder::new()
                .decode(&event(r#"{"type": "ping"}"#))
                .unwrap()
                .is_empty()
        );
    }

    fn encode_stream(events: &[StreamEvent]) -> BytesMut {
        let mut encoder = StreamEncoder::new();
        let mut out = BytesMut::new();
        for event in events {
            encoder.encode(event, &mut out);
        }
        out
    }

    /// Event names and data of an encoded stream, checking each name matches its `type`.
    fn written(out: &[u8]) -> Vec<(String, Value)> {
        parse_events(out)
            .into_iter()
            .map(|e| {
                let data: Value = serde_json::from_str(&e.data).unwrap();
                let name = e.event.unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn names(out: &[u8]) -> Vec<String> {
        written(out).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn encoded_stream_decodes_to_the_same_events() {
        let events = stream_events();
        let out = encode_stream(&events);
        let mut decoder = StreamDecoder::new();
        let got: Vec<StreamEvent> = parse_events(&out)
            .iter()
            .flat_map(|e| decoder.decode(e).unwrap())
            .collect();
        assert_eq!(got, events);
        assert!(decoder.is_done());

        let written = written(&out);
        let start = &written[0].1["message"];
        assert_eq!(start["id"], "msg_01Wx9");
        assert_eq!(start["content"], json!([]));
        assert_eq!(
            start["usage"],
            json!({"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0})
        );
        assert_eq!(
            written[1].1["content_block"],
            json!({"type": "thinking", "thinking": ""})
        );
        let (name, delta) = &written[written.len() - 2];
        assert_eq!(name, "message_delta");
        assert_eq!(
            delta,
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 1024, "output_tokens": 189}})
        );
    }

    #[test]
    fn encoder_waits_for_usage_that_follows_the_finish() {
        let usage = ir::Usage {
            input_tokens: 30,
            output_tokens: 7,
            cached_input_tokens: 10,
            ..Default::default()
        };
        let mut encoder = StreamEncoder::new();
        let mut out = BytesMut::new();
        for event in [
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("Hello".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Finish {
                stop: StopReason::EndTurn,
            },
        ] {
            encoder.encode(&event, &mut out);
        }
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop"
            ],
            "the finish waits for usage"
        );
        encoder.encode(&StreamEvent::Usage(usage), &mut out);
        encoder.encode(&StreamEvent::Done, &mut out);
        let first = written(&out);
        let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[4..], ["message_delta", "message_stop"]);
        assert_eq!(
            first[4].1["usage"],
            json!({"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10, "output_tokens": 7})
        );
        assert_eq!(first[4].1["delta"]["stop_reason"], "end_turn");

        // Usage first: the finish goes out at once. No usage at all: at Done, with zeros.
        let before = encode_stream(&[
            StreamEvent::Start {
                id: "a".into(),
                model: "b".into(),
            },
            StreamEvent::Usage(usage),
            StreamEvent::Finish {
                stop: StopReason::MaxTokens,
            },
        ]);
        let w = written(&before);
        assert_eq!(w[1].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(w[1].1["usage"]["output_tokens"], 7);
        assert_eq!(w[2].0, "message_stop");

        let none = encode_stream(&[
            StreamEvent::Start {
                id: "a".into(),
                model: "b".into(),
            },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Done,
            StreamEvent::Done,
        ]);
        let w = written(&none);
        assert_eq!(
            w.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["message_start", "message_delta", "message_stop"]
        );
        assert_eq!(w[1].1["usage"]["output_tokens"], 0);
    }

    #[test]
    fn encoder_repairs_loose_event_orders() {
        // No Start; a delta without its block; a block started while another is open; an
        // argument delta for a block that never started; a stop for another block.
        let out = encode_stream(&[
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("Hi".into()),
            },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                },
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("{\"a\":".into()),
            },
            StreamEvent::Delta {
                index: 7,
                delta: Delta::ToolArguments("junk".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("1}".into()),
            },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Done,
        ]);
        let w = written(&out);
        let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(w[1].1["content_block"], json!({"type": "text", "text": ""}));
        assert_eq!(
            w[4].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}})
        );
        assert_eq!(w[4].1["index"], 1);
        assert_eq!(
            w[6].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "1}"})
        );

        // An error is written as Anthropic's error event, and ends the stream.
        let out = encode_stream(&[
            StreamEvent::Start {
                id: "a".into(),
                model: "b".into(),
            },
            StreamEvent::Error(ir::ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "upstream overloaded".into(),
            }),
            StreamEvent::Done,
        ]);
        let w = written(&out);
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[1],
            (
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "upstream overloaded"}})
            )
        );
        let mut decoder = StreamDecoder::new();
        let decoded: Vec<StreamEvent> = parse_events(&out)
            .iter()
            .flat_map(|e| decoder.decode(e).unwrap())
            .collect();
        assert_eq!(
            decoded[1],
            StreamEvent::Error(ir::ErrorInfo {
                status: 529,
                kind: ErrorKind::Overloaded,
                message: "upstream overloaded".into()
            })
        );
    }
}
