//! `POST /v1/responses` requests → the canonical model, for targets that do not speak the
//! Responses API (chat-completions hosts, Anthropic, Gemini).
//!
//! * `input`: a string (one user message), or items: messages (`role` user, assistant, system
//!   or developer; content a string or `input_text` / `output_text` / `input_image` parts),
//!   `function_call` and `function_call_output` items. System and developer messages join
//!   `instructions` in the system prompt. `reasoning` items of earlier translated answers give
//!   back their thinking blocks with signatures (`reasoning`); OpenAI's own are dropped (their
//!   content, encrypted or summarised, means nothing to another provider).
//! * `tools` of type `function`; other tool types (OpenAI's hosted tools) are refused, as in
//!   chat completions.
//! * `tool_choice`, `parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p`, `user`,
//!   `text.format` (`text`, `json_object`, `json_schema`), `reasoning.effort`.
//! * State Drover does not keep is refused, naming the field: `previous_response_id`,
//!   `store: true`, `background: true`, `conversation`, and `input_image` / `input_file` by
//!   file id.
//! * Other fields go to [`ChatRequest::extra`], and are reported dropped by the encoder.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::reasoning;
use crate::formats::ir::{
    self, ChatRequest, Message, Part, ResponseFormat, Role, SystemBlock, Tool, ToolChoice,
};
use crate::formats::json::{BodyError, ShallowBody};
use crate::formats::openai::image_source;

fn field<T: serde::de::DeserializeOwned>(
    raw: &RawValue,
    param: &'static str,
) -> Result<Option<T>, BodyError> {
    serde_json::from_str::<Option<T>>(raw.get())
        .map_err(|e| BodyError::new(format!("invalid `{param}`: {e}"), Some(param)))
}

fn bad_input(message: impl Into<String>) -> BodyError {
    BodyError::new(message, Some("input"))
}

/// Decodes a Responses request, recording what the canonical model cannot hold in `dropped`.
pub fn decode_request(body: &[u8], dropped: &mut ir::Dropped) -> Result<ChatRequest, BodyError> {
    let shallow = ShallowBody::parse(body)?;
    let mut req = ChatRequest {
        model: shallow.model()?.into_owned(),
        ..ChatRequest::default()
    };
    let mut input = None;
    let mut instructions: Option<String> = None;
    for (key, raw) in shallow.entries() {
        let raw: &RawValue = raw;
        match key {
            "model" => {}
            "input" => input = Some(raw),
            "instructions" => instructions = field(raw, "instructions")?,
            "stream" => req.stream = shallow.stream()?,
            "max_output_tokens" => req.max_tokens = field(raw, "max_output_tokens")?,
            "temperature" => req.temperature = field(raw, "temperature")?,
            "top_p" => req.top_p = field(raw, "top_p")?,
            "user" => req.user = field(raw, "user")?,
            "parallel_tool_calls" => req.parallel_tool_calls = field(raw, "parallel_tool_calls")?,
            "tools" => req.tools = decode_tools(field(raw, "tools")?.unwrap_or_default(), dropped)?,
            "tool_choice" => {
                req.tool_choice = field::<Value>(raw, "tool_choice")?
                    .map(decode_tool_choice)
                    .transpose()?;
            }
            "text" => {
                let text: Option<Value> = field(raw, "text")?;
                if let Some(format) = text.as_ref().and_then(|t| t.get("format")) {
                    req.response_format = Some(decode_format(format)?);
                }
            }
            "reasoning" => {
                let reasoning: Option<Value> = field(raw, "reasoning")?;
                req.reasoning_effort = reasoning
                    .as_ref()
                    .and_then(|r| r.get("effort"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "previous_response_id" => {
                if field::<Value>(raw, "previous_response_id")?.is_some() {
                    return Err(stateful("previous_response_id"));
                }
            }
            "conversation" => {
                if field::<Value>(raw, "conversation")?.is_some() {
                    return Err(stateful("conversation"));
                }
            }
            "store" => {
                if field::<bool>(raw, "store")? == Some(true) {
                    return Err(stateful("store"));
                }
            }
            "background" => {
                if field::<bool>(raw, "background")? == Some(true) {
                    return Err(stateful("background"));
                }
            }
            // Said of every Responses request the SDKs make; nothing to carry.
            "metadata" | "include" | "truncation" => {}
            other => {
                let value: Value = serde_json::from_str(raw.get())
                    .map_err(|e| BodyError::new(format!("invalid `{other}`: {e}"), None))?;
                req.extra.push((other.to_owned(), value));
            }
        }
    }
    if let Some(text) = instructions.filter(|t| !t.is_empty()) {
        req.system.push(SystemBlock {
            text,
            cache_control: None,
        });
    }
    let input = input.ok_or_else(|| bad_input("you must provide an input parameter"))?;
    decode_input(input, &mut req, dropped)?;
    Ok(req)
}

/// A field of Responses state this gateway does not keep.
fn stateful(field: &'static str) -> BodyError {
    BodyError::new(
        format!(
            "`{field}` needs the conversation state the Responses API keeps; this route's provider gets \
             Responses calls translated (it does not speak the API, or is set to `--responses-api \
             translate`), so send the whole conversation in `input` instead"
        ),
        Some(field),
    )
}

fn decode_input(raw: &RawValue, req: &mut ChatRequest, dropped: &mut ir::Dropped) -> Result<(), BodyError> {
    let value: Value =
        serde_json::from_str(raw.get()).map_err(|e| bad_input(format!("invalid `input`: {e}")))?;
    let items = match value {
        Value::String(text) => {
            push(req, Role::User, text_part(text));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => return Err(bad_input("input must be a string or an array of input items")),
    };
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(bad_input(format!("input[{i}] must be an object")));
        };
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => decode_message(i, &item, req, dropped)?,
            "function_call" => {
                let name =
                    string(&item, "name").ok_or_else(|| bad_input(format!("input[{i}].name is required")))?;
                let call_id = string(&item, "call_id")
                    .ok_or_else(|| bad_input(format!("input[{i}].call_id is required")))?;
                push(
                    req,
                    Role::Assistant,
                    Part::ToolCall {
                        id: call_id,
                        name,
                        arguments: string(&item, "arguments").unwrap_or_else(|| "{}".to_owned()),
                    },
                );
            }
            "function_call_output" => {
                let call_id = string(&item, "call_id")
                    .ok_or_else(|| bad_input(format!("input[{i}].call_id is required")))?;
                let content = parts_of(i, item.get("output"), "output", dropped)?;
                push(
                    req,
                    Role::User,
                    Part::ToolResult {
                        call_id,
                        content,
                        is_error: false,
                        cache_control: None,
                    },
                );
            }
            // Thinking of an earlier translated turn comes back whole, signatures included;
            // OpenAI's own reasoning means nothing to another provider.
            "reasoning" => match item
                .get("encrypted_content")
                .and_then(Value::as_str)
                .and_then(reasoning::open)
            {
                Some(parts) => parts.into_iter().for_each(|p| push(req, Role::Assistant, p)),
                None => dropped.add("reasoning"),
            },
            "item_reference" => {
                return Err(BodyError::new(
                    format!("input[{i}]: item references need the state OpenAI keeps; send the item itself"),
                    Some("input"),
                ));
            }
            other => {
                return Err(bad_input(format!(
                    "input[{i}]: items of type {other:?} cannot be sent to this route's provider"
                )));
            }
        }
    }
    Ok(())
}

fn decode_message(
    i: usize,
    item: &Map<String, Value>,
    req: &mut ChatRequest,
    dropped: &mut ir::Dropped,
) -> Result<(), BodyError> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
    let parts = parts_of(i, item.get("content"), "content", dropped)?;
    match role {
        "user" => parts.into_iter().for_each(|p| push(req, Role::User, p)),
        "assistant" => parts.into_iter().for_each(|p| push(req, Role::Assistant, p)),
        "system" | "developer" => {
            for p in parts {
                match p {
                    Part::Text { text, .. } => req.system.push(SystemBlock {
                        text,
                        cache_control: None,
                    }),
                    _ => dropped.add("system_image"),
                }
            }
        }
        other => {
            return Err(bad_input(format!(
                "input[{i}].role must be user, assistant, system or developer, not {other:?}"
            )));
        }
    }
    Ok(())
}

/// The parts of `input[i].<field>`: a string, or content parts.
fn parts_of(
    i: usize,
    value: Option<&Value>,
    field: &str,
    dropped: &mut ir::Dropped,
) -> Result<Vec<Part>, BodyError> {
    match value {
        Some(Value::String(text)) => Ok(vec![text_part(text.clone())]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                out.extend(content_part(i, p, dropped)?);
            }
            Ok(out)
        }
        _ => Err(bad_input(format!(
            "input[{i}].{field} must be a string or content parts"
        ))),
    }
}

/// A content part: text (`input_text`, `output_text`) or an image; `None` for what is dropped.
fn content_part(i: usize, part: &Value, dropped: &mut ir::Dropped) -> Result<Option<Part>, BodyError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "input_text" | "output_text" | "text" => Ok(Some(text_part(
            part.get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))),
        "refusal" => Ok(Some(text_part(
            part.get("refusal")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ))),
        "input_image" => {
            if part.get("file_id").is_some_and(|f| !f.is_null()) {
                return Err(BodyError::new(
                    format!("input[{i}]: images by file_id need OpenAI's file store; send image_url"),
                    Some("input"),
                ));
            }
            let url = part.get("image_url").and_then(Value::as_str).unwrap_or_default();
            let source = image_source(url.to_owned()).ok_or_else(|| {
                bad_input(format!(
                    "input[{i}]: image data URLs must look like data:<type>;base64,<data>"
                ))
            })?;
            if part
                .get("detail")
                .and_then(Value::as_str)
                .is_some_and(|d| d != "auto")
            {
                dropped.add("image_detail");
            }
            Ok(Some(Part::Image {
                source,
                cache_control: None,
            }))
        }
        "input_file" => Err(BodyError::new(
            format!("input[{i}]: files cannot be sent to this route's provider"),
            Some("input"),
        )),
        other => Err(bad_input(format!(
            "input[{i}]: content parts of type {other:?} are not supported"
        ))),
    }
}

fn text_part(text: String) -> Part {
    Part::Text {
        text,
        cache_control: None,
    }
}

fn string(item: &Map<String, Value>, key: &str) -> Option<String> {
    item.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Appends `part` to the last message if it has `role`, else to a new message.
fn push(req: &mut ChatRequest, role: Role, part: Part) {
    match req.messages.last_mut() {
        Some(m) if m.role == role => m.parts.push(part),
        _ => req.messages.push(Message {
            role,
            parts: vec![part],
        }),
    }
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

fn decode_tools(tools: Vec<Value>, dropped: &mut ir::Dropped) -> Result<Vec<Tool>, BodyError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let tool: WireTool = serde_json::from_value(tool)
            .map_err(|e| BodyError::new(format!("tools[{i}]: {e}"), Some("tools")))?;
        if tool.kind != "function" {
            // OpenAI's hosted tools (web search, file search…) run at OpenAI only.
            return Err(BodyError::new(
                format!(
                    "tools[{i}]: tool type `{}` runs at OpenAI only; only `function` tools can be \
                     translated for this route's provider",
                    tool.kind
                ),
                Some("tools"),
            ));
        }
        let name = tool
            .name
            .ok_or_else(|| BodyError::new(format!("tools[{i}].name is required"), Some("tools")))?;
        if tool.strict == Some(true) {
            dropped.add("strict");
        }
        out.push(Tool {
            name,
            description: tool.description,
            parameters: tool
                .parameters
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            cache_control: None,
        });
    }
    Ok(out)
}

fn decode_tool_choice(choice: Value) -> Result<ToolChoice, BodyError> {
    let bad = || {
        BodyError::new(
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"name\":...}",
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
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => o
            .get("name")
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Tool(n.to_owned()))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn decode_format(format: &Value) -> Result<ResponseFormat, BodyError> {
    let bad = |msg: &str| BodyError::new(msg.to_owned(), Some("text"));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => Ok(ResponseFormat::JsonSchema {
            name: format
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("text.format of type json_schema needs a `name`"))?
                .to_owned(),
            schema: format
                .get("schema")
                .cloned()
                .ok_or_else(|| bad("text.format of type json_schema needs a `schema`"))?,
            strict: format.get("strict").and_then(Value::as_bool),
        }),
        _ => Err(bad("text.format type must be text, json_object or json_schema")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::formats::ir::ImageSource;

    fn decode(body: Value) -> Result<(ChatRequest, ir::Dropped), BodyError> {
        let mut dropped = ir::Dropped::default();
        decode_request(body.to_string().as_bytes(), &mut dropped).map(|r| (r, dropped))
    }

    #[test]
    fn input_items_become_the_conversation() {
        let (req, dropped) = decode(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use metric units."},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "high"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{\"x\":1}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]}
            ],
            "tools": [{"type": "function", "name": "look", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "look"},
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"},
            "max_output_tokens": 99,
            "store": false,
            "metadata": {"k": "v"}
        }))
        .unwrap();
        let system: Vec<_> = req.system.iter().map(|s| s.text.as_str()).collect();
        // `instructions` go first, as OpenAI inserts them.
        assert_eq!(system, ["Be brief.", "Use metric units."]);
        assert_eq!(req.messages.len(), 4, "{:?}", req.messages);
        assert_eq!(req.messages[0].role, Role::User);
        assert!(matches!(
            &req.messages[0].parts[1],
            Part::Image { source: ImageSource::Base64 { media_type, .. }, .. } if media_type == "image/png"
        ));
        assert!(
            matches!(&req.messages[1].parts[0], Part::ToolCall { id, name, .. } if id == "call_1" && name == "look")
        );
        assert!(matches!(&req.messages[2].parts[0], Part::ToolResult { call_id, .. } if call_id == "call_1"));
        assert_eq!(req.messages[3].role, Role::Assistant);
        assert_eq!(req.tools.len(), 1);
        assert_eq!(req.tool_choice, Some(ToolChoice::Tool("look".into())));
        assert!(matches!(
            req.response_format,
            Some(ResponseFormat::JsonSchema {
                strict: Some(true),
                ..
            })
        ));
        assert_eq!(req.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(req.max_tokens, Some(99));
        assert!(req.extra.is_empty(), "{:?}", req.extra);
        assert_eq!(dropped.header_value(), "image_detail,reasoning");
    }

    #[test]
    fn state_it_does_not_keep_and_bad_input_are_refused_naming_the_field() {
        for (body, param) in [
            (
                json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"model": "m", "input": "hi", "store": true}), "store"),
            (
                json!({"model": "m", "input": "hi", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": "hi", "conversation": "conv_1"}),
                "conversation",
            ),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 7}), "input"),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": "hi", "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "web_search_preview"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema"}}}),
                "text",
            ),
        ] {
            let err = decode(body.clone()).unwrap_err();
            assert_eq!(err.param, Some(param), "{body}: {}", err.message);
        }
    }
}
