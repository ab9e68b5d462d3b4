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

mod error;
mod request;
mod response;
mod stream;

pub use error::{decode_error, encode_error};
pub use request::{DEFAULT_MAX_TOKENS, decode_request, encode_request, encode_request_for};
pub use response::{body_usage, decode_response, encode_response};
pub use stream::{EventTap, StreamDecoder, StreamEncoder, error_event};

use std::borrow::Cow;

use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::formats::ir::{self, Part};

/// Any object's `type` field, read first to pick the shape of the rest.
#[derive(Deserialize)]
struct TypeTag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
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

fn tool_use_block<'a>(id: &'a str, name: &'a str, input: ToolInput<'a>) -> Block<'a> {
    Block::ToolUse(ToolUseBlock {
        id: Cow::Borrowed(id),
        name: Cow::Borrowed(name),
        input,
    })
}
