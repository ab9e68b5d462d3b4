//! Messages requests (`POST /v1/messages`): decoded into the canonical model, and encoded for an
//! Anthropic provider.

use std::borrow::Cow;

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    Block, ImageBlock, ImageSourceWire, RedactedThinkingBlock, ThinkingBlock, ToolInput, ToolResultOut,
    clean, from_json, is_false, parse_block, text_block, text_parts, tool_use_block,
};
use crate::formats::ir::{self, Part};
use crate::formats::json::{BodyError, ShallowBody};
use crate::formats::structured;

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

/// A `type` field that may be absent (tools: custom tools may omit it).
#[derive(Deserialize)]
struct OptionalTypeTag<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
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
    /// With native structured output: `{"format": {"type": "json_schema", "schema": …}}`, beside
    /// what the caller's own `output_config` says (e.g. `effort`). Without, the caller's goes in
    /// `extra`.
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<Value>,
    #[serde(flatten)]
    extra: ExtraFields<'a>,
}

fn is_empty_slice(s: &&[String]) -> bool {
    s.is_empty()
}

fn bad(message: String, param: Option<&'static str>) -> BodyError {
    BodyError { message, param }
}

/// A top-level request field, parsed; errors name the field.
fn field<'a, T: Deserialize<'a>>(raw: &'a RawValue, name: &'static str) -> Result<T, BodyError> {
    from_json(raw.get()).map_err(|e| bad(format!("{name}: {e}"), Some(name)))
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
/// * `response_format` (JSON object / schema) becomes `output_config.format` for the models
///   that have it, or a tool the model is made to call (`structured::for_anthropic`); what
///   neither can carry is dropped.
/// * Dropped: `temperature` above 1 (clamped),
///   thinking blocks without a signature, empty text blocks carrying `cache_control`,
///   non-text/image parts of a tool result, and every `extra` field Anthropic does not accept
///   (by name; `n: 1`, `logprobs: false`, zero penalties and nulls count as absent).
pub fn encode_request(req: &ir::ChatRequest, model: &str, dropped: &mut ir::Dropped) -> Bytes {
    encode_request_for(req, model, dropped).0
}

/// [`encode_request`], also saying whether the caller's structured output travels as the output
/// tool, whose call the answer's decoder must turn back into text.
pub fn encode_request_for(req: &ir::ChatRequest, model: &str, dropped: &mut ir::Dropped) -> (Bytes, bool) {
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

    let (output, native) = match structured::for_anthropic(req, model, dropped) {
        Some(structured::Output::Tool(tool, choice)) => (Some((tool, choice)), None),
        Some(structured::Output::Native(schema)) => (None, Some(schema)),
        None => (None, None),
    };
    let tools: Vec<ToolOut<'_>> = req
        .tools
        .iter()
        .chain(output.as_ref().map(|(tool, _)| tool))
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
    let tool_choice = output
        .as_ref()
        .map(|(_, choice)| choice)
        .or(req.tool_choice.as_ref());
    let tool_choice = match tool_choice {
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

    let mut extra = Vec::new();
    let mut output_config = native.as_ref().map(|_| serde_json::Map::new());
    for (key, value) in &req.extra {
        if is_noop(key, value) {
            continue;
        }
        // Native structured output writes `output_config.format`: the caller's other settings
        // there join it, and what would contradict it is dropped.
        if let Some(config) = output_config.as_mut() {
            match (key.as_str(), value) {
                ("output_config", Value::Object(theirs)) => {
                    for (k, v) in theirs {
                        if k == "format" {
                            dropped.add("output_config.format");
                        } else {
                            config.insert(k.clone(), v.clone());
                        }
                    }
                    continue;
                }
                ("output_config" | "output_format", _) => {
                    dropped.add(key.as_str());
                    continue;
                }
                _ => {}
            }
        }
        let accepted = PASS_THROUGH.contains(&key.as_str())
            && (key != "service_tier" || matches!(value.as_str(), Some("auto" | "standard_only")));
        if accepted {
            extra.push((key.as_str(), value));
        } else {
            dropped.add(key.as_str());
        }
    }

    let output_config = output_config.zip(native).map(|(mut config, schema)| {
        config.insert(
            "format".into(),
            serde_json::json!({ "type": "json_schema", "schema": schema }),
        );
        Value::Object(config)
    });

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
        output_config,
        extra: ExtraFields(extra),
    };
    let output_tool = output.is_some();
    (to_bytes(&out), output_tool)
}

/// Serializes a wire value. Our shapes have string keys and no fallible `Serialize`, so this
/// cannot fail; an empty body would be refused upstream rather than sent half-written.
pub(super) fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).map(Bytes::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::formats::test_support::{assistant, ephemeral, text, user};

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
    fn structured_output_travels_as_a_tool_the_model_must_call() {
        let req = ir::ChatRequest {
            response_format: Some(ir::ResponseFormat::JsonSchema {
                name: "person".into(),
                schema: json!({"type": "object", "properties": {"name": {"type": "string"}}}),
                strict: None,
            }),
            ..simple_request()
        };
        let mut dropped = ir::Dropped::default();
        let body: Value = serde_json::from_slice(&encode_request(&req, "claude", &mut dropped)).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(body["tools"][0]["name"], structured::OUTPUT_TOOL);
        assert_eq!(
            body["tools"][0]["input_schema"]["properties"]["name"]["type"],
            "string"
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": structured::OUTPUT_TOOL})
        );
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
                // Carried by a tool the model must call; nothing checks it kept to the schema.
                &["response_format.strict"],
            ),
            (
                "json schema of an array",
                ir::ChatRequest {
                    response_format: Some(ir::ResponseFormat::JsonSchema {
                        name: "w".into(),
                        schema: json!({"type": "array"}),
                        strict: None,
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
                &[],
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
    fn native_structured_output_joins_the_callers_output_config_once() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let req = ir::ChatRequest {
            response_format: Some(ir::ResponseFormat::JsonSchema {
                name: "x".into(),
                schema: schema.clone(),
                strict: None,
            }),
            extra: vec![
                (
                    "output_config".into(),
                    json!({"effort": "low", "format": {"type": "text"}}),
                ),
                (
                    "output_format".into(),
                    json!({"type": "json_schema", "schema": {}}),
                ),
            ],
            ..simple_request()
        };
        let mut dropped = ir::Dropped::default();
        let body = encode_request(&req, "claude-sonnet-4-5", &mut dropped);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches("\"output_config\"").count(), 1, "{text}");
        assert!(!text.contains("\"output_format\""), "{text}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        let mut closed = schema;
        closed["additionalProperties"] = json!(false);
        assert_eq!(
            body["output_config"],
            json!({"effort": "low", "format": {"type": "json_schema", "schema": closed}})
        );
        assert_eq!(dropped.header_value(), "output_config.format,output_format");
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
}
