//! Structured output for targets without a parameter for it (Anthropic): OpenAI's
//! `response_format` (`json_object`, or `json_schema` with a schema) becomes one tool whose
//! input schema is the requested schema, which the model is made to call; the call is turned
//! back into the answer's text, stream and non-stream, so the caller gets exactly what OpenAI
//! would send: the JSON as the message content, finish reason `stop`.
//!
//! The tool is forced (`tool_choice` names it) when the caller has no tools of its own; beside
//! the caller's tools some tool must be called (`any`), so the model either calls one of them
//! or answers through this one. With extended thinking, which Anthropic allows only with
//! `tool_choice` auto, the tool is offered and not forced.

use serde_json::{Value, json};

use super::ir::{
    BlockKind, ChatRequest, Delta, Dropped, Part, ResponseFormat, StopReason, StreamEvent, Tool, ToolChoice,
};

/// The name of the tool that carries the answer.
pub const OUTPUT_TOOL: &str = "json_output";

/// The tool and tool choice that carry `req`'s structured output, if it asks for one and it
/// can travel that way; what cannot be enforced is recorded in `dropped`.
pub fn output_tool(req: &ChatRequest, dropped: &mut Dropped) -> Option<(Tool, ToolChoice)> {
    let (schema, description) = match req.response_format.as_ref()? {
        ResponseFormat::Text => return None,
        ResponseFormat::JsonObject => (
            json!({ "type": "object" }),
            "Give your answer by calling this tool once, with the answer as a JSON object.".to_owned(),
        ),
        ResponseFormat::JsonSchema { name, schema, strict } => {
            // The tool's input is a JSON object: a schema for anything else has no tool to go in.
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                dropped.add("response_format");
                return None;
            }
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
    };
    let choice = match &req.tool_choice {
        // The caller chose a tool, or none: the answer cannot be made to come through ours.
        Some(ToolChoice::Tool(_) | ToolChoice::None) => {
            dropped.add("response_format");
            return None;
        }
        _ if req.tools.iter().any(|t| t.name == OUTPUT_TOOL) => {
            dropped.add("response_format");
            return None;
        }
        _ if req.thinking.is_some() || req.reasoning_effort.is_some() => ToolChoice::Auto,
        _ if req.tools.is_empty() => ToolChoice::Tool(OUTPUT_TOOL.to_owned()),
        _ => ToolChoice::Required,
    };
    let tool = Tool {
        name: OUTPUT_TOOL.to_owned(),
        description: Some(description),
        parameters: schema,
        cache_control: None,
    };
    Some((tool, choice))
}

/// Whether `req` travels with the output tool (as `output_tool` decides).
pub fn uses_output_tool(req: &ChatRequest) -> bool {
    output_tool(req, &mut Dropped::default()).is_some()
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
