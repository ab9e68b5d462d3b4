//! `generateContent` requests, encoded from the canonical model.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::formats::ir::{self, Part, Role};

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

/// IR → Gemini request body (the model goes in the URL, not the body). Records in `dropped`
/// what Gemini cannot express: `cache_control`, `parallel_tool_calls` (when `false`), `user`,
/// `reasoning_effort` (beside `thinking`, or unknown), `thinking` (thinking parts of earlier turns), `tool_call_arguments`
/// (arguments that are not a JSON object), and every key of `extra` by name.
pub fn encode_request(req: &ir::ChatRequest, model: &str, dropped: &mut ir::Dropped) -> Bytes {
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

    let generation = generation_config(req, model, dropped);
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }

    if req.user.is_some() {
        dropped.add("user");
    }
    for (key, _) in &req.extra {
        dropped.add(key.as_str());
    }
    Bytes::from(Value::Object(body).to_string())
}

fn generation_config(req: &ir::ChatRequest, model: &str, dropped: &mut ir::Dropped) -> Map<String, Value> {
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
            config.insert("responseJsonSchema".into(), response_json_schema(schema, dropped));
        }
        Some(ir::ResponseFormat::Text) | None => {}
    }
    let mut thinking_config = Map::new();
    match (&req.thinking, req.reasoning_effort.as_deref()) {
        (Some(thinking), effort) => {
            if effort.is_some() {
                dropped.add("reasoning_effort");
            }
            if let Some(budget) = thinking.budget_tokens {
                thinking_config.insert("thinkingBudget".into(), Value::from(budget));
            }
            thinking_config.insert("includeThoughts".into(), Value::Bool(true));
        }
        (None, Some(effort)) => match effort_budget(effort, model) {
            Some(budget) => {
                thinking_config.insert("thinkingBudget".into(), Value::from(budget));
                if budget > 0 {
                    thinking_config.insert("includeThoughts".into(), Value::Bool(true));
                }
            }
            None => dropped.add("reasoning_effort"),
        },
        (None, None) => {}
    }
    if !thinking_config.is_empty() {
        config.insert("thinkingConfig".into(), Value::Object(thinking_config));
    }
    config
}

/// OpenAI's `reasoning_effort` as a Gemini thinking budget, as Google's own OpenAI-compatible
/// endpoint maps it; `none` turns thinking off, except on the Pro models, which cannot think less
/// than their minimum. `None` for what cannot be said.
fn effort_budget(effort: &str, model: &str) -> Option<u32> {
    match effort {
        "none" if model.contains("-pro") => None,
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" | "xhigh" => Some(24576),
        _ => None,
    }
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

/// Keywords `responseJsonSchema` takes (Gemini's JSON Schema subset for structured output).
const RESPONSE_SCHEMA_KEYWORDS: &[&str] = &[
    "$id",
    "$defs",
    "$ref",
    "$anchor",
    "type",
    "format",
    "title",
    "description",
    "enum",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "anyOf",
    "oneOf",
    "properties",
    "additionalProperties",
    "required",
    "propertyOrdering",
];

/// Keywords that only annotate: removed from `responseJsonSchema` without a word.
const SCHEMA_ANNOTATIONS: &[&str] = &[
    "$schema",
    "$comment",
    "default",
    "example",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// The caller's JSON Schema as Gemini's `responseJsonSchema` takes it: `$defs` and `$ref`,
/// `anyOf` and the bounds Gemini enforces stay, type lists become `anyOf`; annotations go silently, and every
/// other keyword (`minLength`, `pattern`, `const`, `allOf`, `not`, …) is removed and named
/// (`response_format.schema.<keyword>`). Beside a `$ref` Gemini takes only `$` keywords; the
/// rest (typically a description) is removed.
fn response_json_schema(schema: &Value, dropped: &mut ir::Dropped) -> Value {
    let Value::Object(keywords) = schema else {
        return schema.clone();
    };
    let is_ref = keywords.contains_key("$ref");
    let mut out = Map::new();
    for (keyword, value) in keywords {
        // Draft-07 `definitions` (zod-to-json-schema, Pydantic v1) as `$defs`, which Gemini
        // takes; references to them follow.
        let k = match keyword.as_str() {
            "definitions" => "$defs",
            k => k,
        };
        if is_ref && !k.starts_with('$') {
            continue;
        }
        if !RESPONSE_SCHEMA_KEYWORDS.contains(&k) {
            if !SCHEMA_ANNOTATIONS.contains(&k) {
                dropped.add(format!("response_format.schema.{k}"));
            }
            continue;
        }
        if k == "oneOf" {
            // Gemini reads it as `anyOf`: at least one instead of exactly one.
            dropped.add("response_format.schema.oneOf");
        }
        let value = match (k, value) {
            ("properties" | "$defs", Value::Object(named)) => Value::Object(
                named
                    .iter()
                    .map(|(name, s)| (name.clone(), response_json_schema(s, dropped)))
                    .collect(),
            ),
            ("items" | "additionalProperties", Value::Object(_)) => response_json_schema(value, dropped),
            ("prefixItems" | "anyOf" | "oneOf", Value::Array(list)) => {
                Value::Array(list.iter().map(|s| response_json_schema(s, dropped)).collect())
            }
            ("$ref", Value::String(target)) => match target.strip_prefix("#/definitions/") {
                Some(name) => Value::String(format!("#/$defs/{name}")),
                None => value.clone(),
            },
            _ => value.clone(),
        };
        match (out.get_mut(k), value) {
            // `$defs` and `definitions` side by side: one `$defs`, the first's entries first.
            (Some(Value::Object(have)), Value::Object(more)) if k == "$defs" => {
                for (name, def) in more {
                    have.entry(name).or_insert(def);
                }
            }
            (_, value) => {
                out.insert(k.to_owned(), value);
            }
        }
    }
    split_type_list(out)
}

/// A list of types (`["string", "null"]`, how OpenAI's strict mode writes an optional field) as
/// `anyOf`, one branch per type (each named once), the one spelling of a union every Gemini model
/// takes. Each keyword goes to the branch of the type it constrains (`properties` to `object`,
/// `items` to `array`, …), so no subschema is copied; `enum` goes to every branch but `null`.
/// Titles and descriptions stay on the node.
fn split_type_list(mut node: Map<String, Value>) -> Value {
    let several = matches!(node.get("type"), Some(Value::Array(types)) if types.len() > 1);
    if !several || node.contains_key("anyOf") {
        return Value::Object(node);
    }
    let Some(Value::Array(listed)) = node.remove("type") else {
        return Value::Object(node);
    };
    let mut types: Vec<&str> = Vec::new();
    for t in listed.iter().filter_map(Value::as_str) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    let mut outer = Map::new();
    for keep in ["title", "description", "$id", "$anchor", "$defs"] {
        if let Some(v) = node.remove(keep) {
            outer.insert(keep.to_owned(), v);
        }
    }
    let owner = |keyword: &str| -> Option<&'static [&'static str]> {
        match keyword {
            "properties" | "required" | "additionalProperties" | "propertyOrdering" => Some(&["object"]),
            "items" | "prefixItems" | "minItems" | "maxItems" => Some(&["array"]),
            "minimum" | "maximum" => Some(&["number", "integer"]),
            "format" => Some(&["string", "number", "integer"]),
            _ => None,
        }
    };
    let mut branches: Vec<Map<String, Value>> = types
        .iter()
        .map(|t| Map::from_iter([("type".to_owned(), Value::from(*t))]))
        .collect();
    for (keyword, value) in node {
        match owner(&keyword) {
            // The first branch of a type it constrains takes it whole, without a copy.
            Some(owners) => {
                if let Some(branch) = types.iter().position(|t| owners.contains(t)) {
                    branches[branch].insert(keyword, value);
                }
            }
            // `enum` and the like: data, not subschemas; every branch but `null` takes it.
            None => {
                for (branch, t) in branches.iter_mut().zip(&types) {
                    if *t != "null" {
                        branch.insert(keyword.clone(), value.clone());
                    }
                }
            }
        }
    }
    outer.insert(
        "anyOf".into(),
        Value::Array(branches.into_iter().map(Value::Object).collect()),
    );
    Value::Object(outer)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ir::{
        ChatRequest, ImageSource, ResponseFormat, SystemBlock, Thinking, Tool, ToolChoice,
    };
    use crate::formats::test_support::{assistant, text, user};

    fn encode(req: &ChatRequest) -> (Value, Vec<String>) {
        let mut dropped = ir::Dropped::default();
        let body = encode_request(req, "gemini-2.5-flash", &mut dropped);
        (serde_json::from_slice(&body).unwrap(), dropped.names().to_vec())
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
                        "responseJsonSchema": { "type": "object", "properties": { "a": { "type": "number" } }, "additionalProperties": false },
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
                "reasoning effort as a thinking budget",
                Box::new(|r| r.reasoning_effort = Some("medium".into())),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "generationConfig": { "thinkingConfig": { "thinkingBudget": 8192, "includeThoughts": true } }
                }),
                vec![],
            ),
            (
                "reasoning effort none turns thinking off",
                Box::new(|r| r.reasoning_effort = Some("none".into())),
                json!({
                    "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }],
                    "generationConfig": { "thinkingConfig": { "thinkingBudget": 0 } }
                }),
                vec![],
            ),
            (
                "what Gemini cannot say is reported",
                Box::new(|r| {
                    r.user = Some("u-1".into());
                    r.reasoning_effort = Some("extreme".into());
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

        // A Pro model cannot stop thinking: `none` is reported, and it thinks as it will.
        let mut req = hello();
        req.reasoning_effort = Some("none".into());
        let mut dropped = ir::Dropped::default();
        let body: Value =
            serde_json::from_slice(&encode_request(&req, "gemini-2.5-pro", &mut dropped)).unwrap();
        assert!(body.get("generationConfig").is_none(), "{body}");
        assert_eq!(dropped.header_value(), "reasoning_effort");
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
    fn structured_output_keeps_refs_unions_and_bounds_and_names_what_gemini_does_not_take() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "pattern": "^[A-Z]", "description": "Full name"},
                "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 150},
                "nick": {"type": ["string", "null"], "description": "If any"},
                "kind": {"const": "person"},
                "home": {"$ref": "#/$defs/address", "description": "Where they live"},
                "pets": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/pet"}, {"type": "null"}]}, "maxItems": 3, "uniqueItems": true}
            },
            "required": ["name", "age", "kind", "home", "pets"],
            "additionalProperties": false,
            "$defs": {
                "address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false, "examples": [{"city": "Paris"}]},
                "pet": {"type": "object", "properties": {"species": {"enum": ["cat", "dog"]}}, "allOf": [{"required": ["species"]}]}
            }
        });
        let mut dropped = ir::Dropped::default();
        let sent = response_json_schema(&schema, &mut dropped);
        assert_eq!(
            sent,
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "Full name"},
                    "nick": {"description": "If any", "anyOf": [{"type": "string"}, {"type": "null"}]},
                    "age": {"anyOf": [
                        {"type": "integer", "minimum": 0, "maximum": 150},
                        {"type": "null"}
                    ]},
                    "kind": {},
                    "home": {"$ref": "#/$defs/address"},
                    "pets": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/pet"}, {"type": "null"}]}, "maxItems": 3}
                },
                "required": ["name", "age", "kind", "home", "pets"],
                "additionalProperties": false,
                "$defs": {
                    "address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false},
                    "pet": {"type": "object", "properties": {"species": {"enum": ["cat", "dog"]}}}
                }
            })
        );
        let header = dropped.header_value();
        let mut named: Vec<&str> = header.split(',').collect();
        named.sort_unstable();
        let draft7 = json!({
            "type": "object",
            "properties": {"a": {"$ref": "#/definitions/A"}, "b": {"oneOf": [{"$ref": "#/$defs/B"}, {"type": "null"}]}},
            "definitions": {"A": {"type": "string"}},
            "$defs": {"B": {"type": "integer"}}
        });
        // Nested unions copy no subschema: the answer grows with the schema, not 2^depth, and
        // a type named twice is one branch.
        let mut nested = json!({"type": "string"});
        for _ in 0..40 {
            nested =
                json!({"type": ["object", "null", "object"], "properties": {"next": nested}, "enum": [null]});
        }
        let mut none = ir::Dropped::default();
        let sent = response_json_schema(&nested, &mut none).to_string();
        assert!(sent.len() < 4_000, "{} bytes", sent.len());
        assert!(
            sent.starts_with(r#"{"anyOf":[{"enum":[null],"properties":{"next":{"anyOf""#),
            "{sent}"
        );
        assert!(none.is_empty());
        let mut also = ir::Dropped::default();
        assert_eq!(
            response_json_schema(&draft7, &mut also),
            json!({
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/A"}, "b": {"oneOf": [{"$ref": "#/$defs/B"}, {"type": "null"}]}},
                "$defs": {"B": {"type": "integer"}, "A": {"type": "string"}}
            })
        );
        assert_eq!(also.header_value(), "response_format.schema.oneOf");
        assert_eq!(
            named,
            [
                "response_format.schema.allOf",
                "response_format.schema.const",
                "response_format.schema.minLength",
                "response_format.schema.pattern",
                "response_format.schema.uniqueItems",
            ]
        );
    }
}
