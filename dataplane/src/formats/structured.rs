//! Structured output to Anthropic, which has no `response_format`: OpenAI's `response_format`
//! (`json_object`, or `json_schema` with a schema) travels one of two ways.
//!
//! * **Natively**, as `output_config.format` (constrained decoding), for the models that have it
//!   (Claude 4.5 and later) when the schema is an object schema without recursion. Keywords
//!   Anthropic does not enforce are removed from the schema and named in `x-drover-dropped`
//!   (`response_format.schema.<keyword>`); every object gets `additionalProperties: false`,
//!   which Anthropic requires. The answer's text is the JSON, as OpenAI sends it.
//! * **As a tool** otherwise (JSON mode, older models, recursive schemas): one tool whose input
//!   schema is the requested schema, which the model is made to call; the call is turned back
//!   into the answer's text, stream and non-stream, so the caller gets exactly what OpenAI would
//!   send: the JSON as the message content, finish reason `stop`. The tool is forced
//!   (`tool_choice` names it) when the caller has no tools of its own; beside the caller's
//!   tools some tool must be called (`any`), so the model either calls one of them or answers
//!   through this one. With extended thinking, which Anthropic allows only with `tool_choice`
//!   auto, the tool is offered and not forced.

use serde_json::{Value, json};

use super::ir::{
    BlockKind, ChatRequest, Delta, Dropped, Part, ResponseFormat, StopReason, StreamEvent, Tool, ToolChoice,
};

/// The name of the tool that carries the answer.
pub const OUTPUT_TOOL: &str = "json_output";

/// How a request's structured output reaches Anthropic.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// `output_config.format` with this schema.
    Native(Value),
    /// This tool, with this choice.
    Tool(Tool, ToolChoice),
}

/// The way chosen, before anything is built.
enum Way {
    Native,
    Tool(ToolChoice),
    /// It cannot travel: the response format is dropped.
    Neither,
}

fn choose(req: &ChatRequest, model: &str) -> Option<Way> {
    match req.response_format.as_ref()? {
        ResponseFormat::Text => return None,
        ResponseFormat::JsonObject => {}
        ResponseFormat::JsonSchema { schema, .. } => {
            // Both ways carry a JSON object: a schema for anything else has nowhere to go.
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Some(Way::Neither);
            }
            if has_native_output(model) && fits_native(schema) && !is_recursive(schema) {
                return Some(Way::Native);
            }
        }
    }
    Some(match &req.tool_choice {
        // The caller chose a tool, or none: the answer cannot be made to come through ours.
        Some(ToolChoice::Tool(_) | ToolChoice::None) => Way::Neither,
        _ if req.tools.iter().any(|t| t.name == OUTPUT_TOOL) => Way::Neither,
        _ if req.thinking.is_some() || req.reasoning_effort.is_some() => Way::Tool(ToolChoice::Auto),
        _ if req.tools.is_empty() => Way::Tool(ToolChoice::Tool(OUTPUT_TOOL.to_owned())),
        _ => Way::Tool(ToolChoice::Required),
    })
}

/// How `req`'s structured output travels to Anthropic's `model`, if it asks for one and it can
/// travel at all; what cannot be enforced is recorded in `dropped`.
pub fn for_anthropic(req: &ChatRequest, model: &str, dropped: &mut Dropped) -> Option<Output> {
    let choice = match choose(req, model)? {
        Way::Neither => {
            dropped.add("response_format");
            return None;
        }
        Way::Native => {
            let Some(ResponseFormat::JsonSchema { schema, .. }) = &req.response_format else {
                return None;
            };
            return Some(Output::Native(native_schema(schema, dropped)));
        }
        Way::Tool(choice) => choice,
    };
    let (schema, description) = match req.response_format.as_ref()? {
        ResponseFormat::JsonSchema { name, schema, strict } => {
            if *strict == Some(true) {
                // The model is asked to follow the schema; nothing checks that it did.
                dropped.add("response_format.strict");
            }
            (
                schema.clone(),
                format!(
                    "Give your answer by calling this tool once, with the answer ({name}) as its \
                     input, which must match the input schema."
                ),
            )
        }
        _ => (
            json!({ "type": "object" }),
            "Give your answer by calling this tool once, with the answer as a JSON object.".to_owned(),
        ),
    };
    let tool = Tool {
        name: OUTPUT_TOOL.to_owned(),
        description: Some(description),
        parameters: schema,
        cache_control: None,
    };
    Some(Output::Tool(tool, choice))
}

/// Whether `req` travels to Anthropic's `model` with the output tool, whose call must be turned
/// back into text on the way out (the encoder says so for a request it sends:
/// `anthropic::encode_request_for`).
#[cfg(test)]
fn uses_output_tool(req: &ChatRequest, model: &str) -> bool {
    matches!(choose(req, model), Some(Way::Tool(_)))
}

/// Whether an Anthropic model has native structured output: Claude 4.5 and later
/// (`claude-sonnet-4-5`, `claude-opus-4-5-20251101`, `claude-haiku-4-5`, `claude-sonnet-5`, …).
/// Older names (`claude-3-7-sonnet-…`, `claude-sonnet-4-20250514`, `claude-opus-4-1`) do not.
pub fn has_native_output(model: &str) -> bool {
    let Some(rest) = model.strip_prefix("claude-") else {
        return false;
    };
    // Version numbers are the short numeric parts; a date (8 digits) is not one.
    let mut numbers = rest
        .split(['-', '.'])
        .filter(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|p| p.parse::<u32>().ok());
    let new_style = ["opus", "sonnet", "haiku"]
        .iter()
        .any(|family| rest.starts_with(family) && rest[family.len()..].starts_with('-'));
    if !new_style {
        return false;
    }
    match (numbers.next(), numbers.next()) {
        (Some(major), _) if major >= 5 => true,
        (Some(4), Some(minor)) => minor >= 5,
        _ => false,
    }
}

/// Keywords Anthropic's structured output does not enforce; removed and named.
const UNENFORCED: &[&str] = &[
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "contains",
    "minContains",
    "maxContains",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
];

/// String formats Anthropic enforces; others are removed and named.
const FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
];

/// The caller's schema as Anthropic's structured output takes it: keywords it does not enforce
/// removed (and named), `oneOf` as `anyOf`, every object closed with `additionalProperties:
/// false`.
pub fn native_schema(schema: &Value, dropped: &mut Dropped) -> Value {
    let mut out = schema.clone();
    close(&mut out, dropped);
    out
}

fn close(node: &mut Value, dropped: &mut Dropped) {
    let Value::Object(map) = node else {
        return;
    };
    for key in UNENFORCED {
        if map.remove(*key).is_some() {
            dropped.add(format!("response_format.schema.{key}"));
        }
    }
    if map.get("minItems").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        map.remove("minItems");
        dropped.add("response_format.schema.minItems");
    }
    if map
        .get("format")
        .is_some_and(|f| !f.as_str().is_some_and(|f| FORMATS.contains(&f)))
    {
        map.remove("format");
        dropped.add("response_format.schema.format");
    }
    if let Some(one_of) = map.remove("oneOf") {
        // At least one instead of exactly one: close enough to keep, but not the same.
        dropped.add("response_format.schema.oneOf");
        map.entry("anyOf").or_insert(one_of);
    }
    let is_object = map.contains_key("properties")
        || match map.get("type") {
            Some(Value::String(t)) => t == "object",
            Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
            _ => false,
        };
    if is_object {
        // Open objects never come here (`fits_native`): this closes the ones that list their
        // properties and do not say.
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties", "$defs", "definitions"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            children.values_mut().for_each(|c| close(c, dropped));
        }
    }
    for key in ["items", "prefixItems", "anyOf", "allOf"] {
        match map.get_mut(key) {
            Some(Value::Array(children)) => children.iter_mut().for_each(|c| close(c, dropped)),
            Some(child @ Value::Object(_)) => close(child, dropped),
            _ => {}
        }
    }
}

/// Optional properties and unions Anthropic's compiled grammar takes at most; past them it
/// refuses the request ("The compiled grammar is too large"), so the tool carries the schema.
const MAX_OPTIONAL_PROPERTIES: usize = 24;
const MAX_UNIONS: usize = 16;

/// Whether Anthropic's structured output can carry `schema` as the caller meant it: every object
/// either closed (`additionalProperties: false`) or listing its properties (an open object, a map
/// such as `additionalProperties: {type: integer}`, would be forced empty), every `$ref` to a
/// definition of this schema (`#/$defs/NAME` or `#/definitions/NAME`), no `allOf` of references,
/// and no more optional properties and unions than it compiles.
fn fits_native(schema: &Value) -> bool {
    #[derive(Default)]
    struct Counts {
        optional: usize,
        unions: usize,
    }
    fn def_exists(root: &Value, reference: &str) -> bool {
        ["$defs", "definitions"].iter().any(|k| {
            reference
                .strip_prefix("#/")
                .and_then(|r| r.strip_prefix(*k))
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|name| {
                    !name.contains(['/', '~', '%']) && root.get(*k).and_then(|d| d.get(name)).is_some()
                })
        })
    }
    fn walk(root: &Value, node: &Value, c: &mut Counts) -> bool {
        let Value::Object(map) = node else {
            // `true` (anything) is as open as it gets; `false` cannot be answered at all.
            return false;
        };
        if let Some(reference) = map.get("$ref")
            && !reference.as_str().is_some_and(|r| def_exists(root, r))
        {
            return false;
        }
        let properties = map.get("properties").and_then(Value::as_object);
        let is_object = properties.is_some()
            || match map.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
        if is_object {
            let closed = match map.get("additionalProperties") {
                Some(Value::Bool(false)) => true,
                None => properties.is_some_and(|p| !p.is_empty()),
                Some(_) => false,
            };
            if !closed {
                return false;
            }
            let required: Vec<&str> = map
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            c.optional += properties.map_or(0, |p| {
                p.keys().filter(|k| !required.contains(&k.as_str())).count()
            });
        }
        let type_list = matches!(map.get("type"), Some(Value::Array(ts)) if ts.len() > 1);
        if type_list || map.contains_key("anyOf") || map.contains_key("oneOf") {
            c.unions += 1;
        }
        if let Some(Value::Array(all)) = map.get("allOf")
            && all.iter().any(|s| s.get("$ref").is_some())
        {
            return false;
        }
        let named = ["properties", "$defs", "definitions"]
            .iter()
            .filter_map(|k| map.get(*k).and_then(Value::as_object))
            .flat_map(|m| m.values());
        let listed = ["items", "prefixItems", "anyOf", "oneOf", "allOf"]
            .iter()
            .filter_map(|k| map.get(*k))
            .flat_map(|v| match v {
                Value::Array(items) => items.iter().collect::<Vec<_>>(),
                item => vec![item],
            });
        named.chain(listed).all(|child| walk(root, child, c))
            && c.optional <= MAX_OPTIONAL_PROPERTIES
            && c.unions <= MAX_UNIONS
    }
    walk(schema, schema, &mut Counts::default())
}

/// Whether a schema refers to itself (`$ref: "#"`, or definitions that reach themselves), which
/// Anthropic's structured output does not take.
fn is_recursive(schema: &Value) -> bool {
    use std::collections::HashMap;
    let mut refs = Vec::new();
    collect_refs(schema, &mut refs, true);
    // Each definition's references, collected once: the graph is walked in linear time, however
    // many definitions a hostile schema holds.
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for defs in ["$defs", "definitions"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_object))
    {
        for (name, def) in defs {
            let mut inner = Vec::new();
            collect_refs(def, &mut inner, false);
            refs.extend(inner.iter().copied());
            let targets = inner
                .into_iter()
                .map(|r| r.rsplit('/').next().unwrap_or_default());
            edges.entry(name.as_str()).or_default().extend(targets);
        }
    }
    if refs.contains(&"#") {
        return true;
    }
    // A cycle among the definitions: depth-first, a node on the current path met again.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = HashMap::new();
    for &start in edges.keys() {
        if marks.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::OnPath);
        while let Some((node, next)) = stack.last_mut() {
            let targets = edges.get(*node).map_or(&[][..], Vec::as_slice);
            let Some(&target) = targets.get(*next) else {
                marks.insert(*node, Mark::Done);
                stack.pop();
                continue;
            };
            *next += 1;
            match marks.get(target) {
                Some(Mark::OnPath) => return true,
                Some(Mark::Done) => {}
                None if edges.contains_key(target) => {
                    marks.insert(target, Mark::OnPath);
                    stack.push((target, 0));
                }
                None => {}
            }
        }
    }
    false
}

/// Every `$ref` under `node`; at the root, not those inside its own definitions.
fn collect_refs<'a>(node: &'a Value, out: &mut Vec<&'a str>, root: bool) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push(r);
                    }
                } else if !(root && (k == "$defs" || k == "definitions")) {
                    collect_refs(v, out, false);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out, false)),
        _ => {}
    }
}

/// A complete answer: the output tool's call becomes the text of the answer (its arguments,
/// the JSON), and the answer ends with `stop` unless another tool was called too.
pub fn unwrap_response(parts: &mut Vec<Part>, stop: &mut StopReason) {
    let Some(at) = parts
        .iter()
        .position(|p| matches!(p, Part::ToolCall { name, .. } if name == OUTPUT_TOOL))
    else {
        return;
    };
    let Part::ToolCall { arguments, .. } = parts.remove(at) else {
        return;
    };
    // Text the model wrote around the call is not part of the answer.
    parts.retain(|p| !matches!(p, Part::Text { .. }));
    parts.insert(
        at.min(parts.len()),
        Part::Text {
            text: arguments,
            cache_control: None,
        },
    );
    let other_calls = parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    if *stop == StopReason::ToolUse && !other_calls {
        *stop = StopReason::EndTurn;
    }
}

/// The same for a stream, event by event: the output tool's block becomes a text block and
/// its argument fragments text fragments; the model's own text blocks are left out, and the
/// finish reason says `stop` unless another tool was called.
#[derive(Debug, Default)]
pub struct StreamUnwrap {
    /// The text block being left out (blocks never interleave, so one at a time), and the
    /// output tool's block.
    skipping: Option<usize>,
    output: Option<usize>,
    other_calls: bool,
}

impl StreamUnwrap {
    /// `event` as the caller gets it; `None` to leave it out.
    pub fn map(&mut self, event: StreamEvent) -> Option<StreamEvent> {
        match event {
            StreamEvent::BlockStart { index, kind } => match kind {
                BlockKind::ToolCall { name, .. } if name == OUTPUT_TOOL && self.output.is_none() => {
                    self.output = Some(index);
                    Some(StreamEvent::BlockStart {
                        index,
                        kind: BlockKind::Text,
                    })
                }
                BlockKind::Text => {
                    self.skipping = Some(index);
                    None
                }
                kind => {
                    if matches!(kind, BlockKind::ToolCall { .. }) {
                        self.other_calls = true;
                    }
                    Some(StreamEvent::BlockStart { index, kind })
                }
            },
            StreamEvent::Delta { index, delta } => {
                if self.skipping == Some(index) {
                    return None;
                }
                let delta = match delta {
                    Delta::ToolArguments(json) if self.output == Some(index) => Delta::Text(json),
                    delta => delta,
                };
                Some(StreamEvent::Delta { index, delta })
            }
            StreamEvent::BlockStop { index } if self.skipping == Some(index) => None,
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            } if self.output.is_some() && !self.other_calls => Some(StreamEvent::Finish {
                stop: StopReason::EndTurn,
            }),
            event => Some(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model without native structured output, and one with it.
    const OLDER: &str = "claude-3-7-sonnet-20250219";
    const NATIVE: &str = "claude-sonnet-4-5-20250929";

    /// The tool way, as a model without native structured output gets it.
    fn output_tool(req: &ChatRequest, dropped: &mut Dropped) -> Option<(Tool, ToolChoice)> {
        match for_anthropic(req, OLDER, dropped)? {
            Output::Tool(tool, choice) => Some((tool, choice)),
            Output::Native(schema) => panic!("native for an older model: {schema}"),
        }
    }

    #[test]
    fn native_structured_output_is_for_claude_4_5_and_later() {
        for model in [
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "claude-opus-4-5-20251101",
            "claude-haiku-4-5",
            "claude-opus-4-6",
            "claude-sonnet-4-6",
            "claude-opus-4-7",
            "claude-sonnet-5",
            "claude-opus-5-1-20270101",
        ] {
            assert!(has_native_output(model), "{model}");
        }
        for model in [
            "claude-3-7-sonnet-20250219",
            "claude-3-5-haiku-latest",
            "claude-sonnet-4-20250514",
            "claude-sonnet-4-0",
            "claude-opus-4-1",
            "claude-opus-4-1-20250805",
            "claude-2.1",
            "gpt-4o",
            "my-claude-sonnet-4-5",
            "claude-sonnet",
        ] {
            assert!(!has_native_output(model), "{model}");
        }
    }

    #[test]
    fn a_schema_goes_natively_closed_and_with_what_anthropic_does_not_enforce_removed() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 40},
                "age": {"type": "integer", "minimum": 0},
                "email": {"type": "string", "format": "email"},
                "tags": {"type": "array", "items": {"type": "string", "format": "color"}, "minItems": 1, "maxItems": 5},
                "home": {"$ref": "#/$defs/address"},
                "pet": {"oneOf": [{"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}}, {"type": "null"}]}
            },
            "required": ["name"],
            "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}}}}
        });
        let req = request(Some(ResponseFormat::JsonSchema {
            name: "person".into(),
            schema,
            strict: Some(true),
        }));
        let mut dropped = Dropped::default();
        let Some(Output::Native(sent)) = for_anthropic(&req, NATIVE, &mut dropped) else {
            panic!("not native");
        };
        assert_eq!(
            sent,
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer"},
                    "email": {"type": "string", "format": "email"},
                    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "home": {"$ref": "#/$defs/address"},
                    "pet": {"anyOf": [
                        {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "additionalProperties": false},
                        {"type": "null"}
                    ]}
                },
                "required": ["name"],
                "additionalProperties": false,
                "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": false}}
            })
        );
        let header = dropped.header_value();
        let mut named: Vec<&str> = header.split(',').map(str::trim).collect();
        named.sort_unstable();
        assert_eq!(
            named,
            [
                "response_format.schema.format",
                "response_format.schema.maxItems",
                "response_format.schema.maxLength",
                "response_format.schema.minLength",
                "response_format.schema.minimum",
                "response_format.schema.oneOf",
            ],
            "strict is enforced natively, so it is not named"
        );
        assert!(!uses_output_tool(&req, NATIVE));
        assert!(uses_output_tool(&req, OLDER));
    }

    #[test]
    fn schemas_native_output_would_change_or_refuse_take_the_tool() {
        let object = |extra: Value| {
            let mut s = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
            s["properties"]["b"] = extra;
            s
        };
        let optional = |n: usize| {
            let properties: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), json!({"type": "string"})))
                .collect();
            json!({"type": "object", "properties": properties})
        };
        let unions = |n: usize| {
            let properties: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), json!({"type": ["string", "null"]})))
                .collect();
            let required: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            json!({"type": "object", "properties": properties, "required": required})
        };
        for (why, schema) in [
            ("a free-form object", object(json!({"type": "object"}))),
            (
                "an object without properties",
                object(json!({"type": "object", "properties": {}})),
            ),
            (
                "a map",
                object(json!({"type": "object", "additionalProperties": {"type": "integer"}})),
            ),
            (
                "an open object with properties",
                object(json!({"type": "object", "properties": {"x": {}}, "additionalProperties": true})),
            ),
            ("the root as a free-form object", json!({"type": "object"})),
            (
                "a reference into properties",
                object(json!({"type": "object", "properties": {"next": {"$ref": "#/properties/b"}}})),
            ),
            ("a dangling reference", object(json!({"$ref": "#/$defs/missing"}))),
            (
                "an escaped reference",
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/a~1b"}}, "$defs": {"a/b": {"type": "string"}}}),
            ),
            ("an anchor", object(json!({"$ref": "#node"}))),
            (
                "allOf of a reference",
                json!({"type": "object", "properties": {"a": {"allOf": [{"$ref": "#/definitions/x"}]}}, "definitions": {"x": {"type": "string"}}}),
            ),
            ("25 optional properties", optional(25)),
            ("17 unions", unions(17)),
            ("a schema that is true", object(json!(true))),
        ] {
            let req = request(Some(ResponseFormat::JsonSchema {
                name: "x".into(),
                schema,
                strict: Some(true),
            }));
            assert!(uses_output_tool(&req, NATIVE), "{why}");
        }
        for (why, schema) in [
            ("24 optional properties", optional(24)),
            ("16 unions", unions(16)),
            (
                "a closed object without properties",
                object(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            ),
            (
                "references to definitions",
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}, "b": {"$ref": "#/definitions/y"}},
                "$defs": {"x": {"type": "string"}}, "definitions": {"y": {"type": "integer"}}}),
            ),
        ] {
            let req = request(Some(ResponseFormat::JsonSchema {
                name: "x".into(),
                schema,
                strict: Some(true),
            }));
            assert!(!uses_output_tool(&req, NATIVE), "{why}");
        }
    }

    #[test]
    fn recursive_schemas_and_json_mode_take_the_tool_even_where_native_output_exists() {
        let recursive = [
            json!({"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}),
            json!({"type": "object", "properties": {"root": {"$ref": "#/$defs/node"}},
                   "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}}),
            json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/a"}},
                   "definitions": {"a": {"type": "object", "properties": {"b": {"$ref": "#/definitions/b"}}},
                                   "b": {"type": "object", "properties": {"a": {"$ref": "#/definitions/a"}}}}}),
        ];
        for schema in recursive {
            let req = request(Some(ResponseFormat::JsonSchema {
                name: "tree".into(),
                schema: schema.clone(),
                strict: None,
            }));
            assert!(uses_output_tool(&req, NATIVE), "{schema}");
            let mut dropped = Dropped::default();
            assert!(matches!(
                for_anthropic(&req, NATIVE, &mut dropped),
                Some(Output::Tool(..))
            ));
        }
        let shared = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"$ref": "#/$defs/p"}},
                            "$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}}}});
        assert!(!is_recursive(&shared), "a definition used twice is not recursion");
        // A long chain of definitions (as a hostile schema may hold), then the same closed into a loop.
        let chain = |close: bool| {
            let n = 20_000;
            let defs: serde_json::Map<String, Value> = (0..n)
                .map(|i| {
                    let next = if i + 1 < n {
                        json!({"$ref": format!("#/$defs/d{}", i + 1)})
                    } else if close {
                        json!({"$ref": "#/$defs/d0"})
                    } else {
                        json!({"type": "string"})
                    };
                    (
                        format!("d{i}"),
                        json!({"type": "object", "properties": {"next": next}}),
                    )
                })
                .collect();
            json!({"type": "object", "properties": {"head": {"$ref": "#/$defs/d0"}}, "$defs": defs})
        };
        assert!(!is_recursive(&chain(false)));
        assert!(is_recursive(&chain(true)));
        let json_mode = request(Some(ResponseFormat::JsonObject));
        assert!(uses_output_tool(&json_mode, NATIVE));
    }

    #[test]
    fn native_output_keeps_the_callers_tools_and_choice_and_works_with_thinking() {
        let req = ChatRequest {
            tools: vec![Tool {
                name: "lookup".into(),
                description: None,
                parameters: json!({"type": "object"}),
                cache_control: None,
            }],
            tool_choice: Some(ToolChoice::Tool("lookup".into())),
            reasoning_effort: Some("low".into()),
            ..request(Some(schema()))
        };
        let mut dropped = Dropped::default();
        assert!(matches!(
            for_anthropic(&req, NATIVE, &mut dropped),
            Some(Output::Native(_))
        ));
        assert!(dropped.is_empty(), "{dropped:?}");

        // What goes upstream: the caller's tools and choice, or its thinking, beside the format.
        let encode = |req: &ChatRequest| -> Value {
            let mut dropped = Dropped::default();
            let body = crate::formats::anthropic::encode_request(req, NATIVE, &mut dropped);
            serde_json::from_slice(&body).unwrap()
        };
        let chosen = encode(&ChatRequest {
            reasoning_effort: None,
            ..req.clone()
        });
        assert_eq!(chosen["tools"].as_array().map(Vec::len), Some(1), "{chosen}");
        assert_eq!(chosen["tool_choice"], json!({"type": "tool", "name": "lookup"}));
        assert_eq!(chosen["output_config"]["format"]["type"], "json_schema");
        let thinking = encode(&ChatRequest {
            tool_choice: None,
            ..req
        });
        assert_eq!(thinking["thinking"]["type"], "enabled", "{thinking}");
        assert_eq!(
            thinking["output_config"]["format"]["schema"]["required"],
            json!(["name"])
        );
    }

    fn request(format: Option<ResponseFormat>) -> ChatRequest {
        ChatRequest {
            response_format: format,
            ..ChatRequest::default()
        }
    }

    fn schema() -> ResponseFormat {
        ResponseFormat::JsonSchema {
            name: "person".into(),
            schema: json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
            strict: Some(true),
        }
    }

    #[test]
    fn the_requested_schema_becomes_a_tool_forced_when_the_caller_has_none() {
        let mut dropped = Dropped::default();
        let (tool, choice) = output_tool(&request(Some(schema())), &mut dropped).unwrap();
        assert_eq!(tool.name, OUTPUT_TOOL);
        assert_eq!(tool.parameters["required"], json!(["name"]));
        assert_eq!(choice, ToolChoice::Tool(OUTPUT_TOOL.into()));
        assert_eq!(dropped.header_value(), "response_format.strict");

        let mut dropped = Dropped::default();
        let (tool, _) = output_tool(&request(Some(ResponseFormat::JsonObject)), &mut dropped).unwrap();
        assert_eq!(tool.parameters, json!({"type": "object"}));
        assert!(dropped.is_empty());
        assert!(output_tool(&request(Some(ResponseFormat::Text)), &mut dropped).is_none());
        assert!(output_tool(&request(None), &mut dropped).is_none());
        assert!(dropped.is_empty());
    }

    #[test]
    fn beside_the_callers_tools_some_tool_must_be_called_and_a_chosen_tool_wins() {
        let theirs = Tool {
            name: "lookup".into(),
            description: None,
            parameters: json!({"type": "object"}),
            cache_control: None,
        };
        let with_tools = ChatRequest {
            tools: vec![theirs.clone()],
            ..request(Some(ResponseFormat::JsonObject))
        };
        let mut dropped = Dropped::default();
        assert_eq!(
            output_tool(&with_tools, &mut dropped).unwrap().1,
            ToolChoice::Required
        );
        let thinking = ChatRequest {
            reasoning_effort: Some("low".into()),
            ..request(Some(ResponseFormat::JsonObject))
        };
        assert_eq!(output_tool(&thinking, &mut dropped).unwrap().1, ToolChoice::Auto);
        assert!(dropped.is_empty());
        for refused in [
            ChatRequest {
                tool_choice: Some(ToolChoice::Tool("lookup".into())),
                ..with_tools.clone()
            },
            ChatRequest {
                tools: vec![Tool {
                    name: OUTPUT_TOOL.into(),
                    ..theirs.clone()
                }],
                ..request(Some(ResponseFormat::JsonObject))
            },
            request(Some(ResponseFormat::JsonSchema {
                name: "list".into(),
                schema: json!({"type": "array"}),
                strict: None,
            })),
        ] {
            let mut dropped = Dropped::default();
            assert!(output_tool(&refused, &mut dropped).is_none());
            assert_eq!(dropped.header_value(), "response_format");
        }
    }

    #[test]
    fn the_output_tools_call_becomes_the_text_of_the_answer() {
        let mut parts = vec![
            Part::Text {
                text: "Here you go:".into(),
                cache_control: None,
            },
            Part::ToolCall {
                id: "toolu_1".into(),
                name: OUTPUT_TOOL.into(),
                arguments: r#"{"name":"Ada"}"#.into(),
            },
        ];
        let mut stop = StopReason::ToolUse;
        unwrap_response(&mut parts, &mut stop);
        assert_eq!(
            parts,
            [Part::Text {
                text: r#"{"name":"Ada"}"#.into(),
                cache_control: None
            }]
        );
        assert_eq!(stop, StopReason::EndTurn);
        // Another tool called instead: left as it is.
        let call = Part::ToolCall {
            id: "toolu_2".into(),
            name: "lookup".into(),
            arguments: "{}".into(),
        };
        let mut parts = vec![call.clone()];
        let mut stop = StopReason::ToolUse;
        unwrap_response(&mut parts, &mut stop);
        assert_eq!((parts, stop), (vec![call], StopReason::ToolUse));
    }

    #[test]
    fn a_stream_of_the_output_tool_becomes_a_text_stream() {
        let mut u = StreamUnwrap::default();
        let events = vec![
            StreamEvent::Start {
                id: "m".into(),
                model: "claude".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("Sure.".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "toolu_1".into(),
                    name: OUTPUT_TOOL.into(),
                },
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("{\"name\":".into()),
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("\"Ada\"}".into()),
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Done,
        ];
        let out: Vec<_> = events.into_iter().filter_map(|e| u.map(e)).collect();
        assert_eq!(
            out,
            [
                StreamEvent::Start {
                    id: "m".into(),
                    model: "claude".into()
                },
                StreamEvent::BlockStart {
                    index: 1,
                    kind: BlockKind::Text
                },
                StreamEvent::Delta {
                    index: 1,
                    delta: Delta::Text("{\"name\":".into())
                },
                StreamEvent::Delta {
                    index: 1,
                    delta: Delta::Text("\"Ada\"}".into())
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::Finish {
                    stop: StopReason::EndTurn
                },
                StreamEvent::Done,
            ]
        );
    }
}
