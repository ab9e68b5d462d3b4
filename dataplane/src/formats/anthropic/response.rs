//! Whole Messages answers, their usage and stop reasons, to and from the canonical model.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::request::to_bytes;
use super::{
    Block, ErrorIn, MessageBody, RedactedThinkingBlock, ThinkingBlock, ToolInput, UsageIn, UsageOut, clean,
    parse_block, text_block, tool_use_block,
};
use crate::formats::ir::{self, Part, StopReason};
use crate::formats::json::ShallowBody;

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

/// Anthropic usage → canonical usage (input tokens made to include cache reads and writes).
pub(super) fn usage_from_wire(u: &UsageIn) -> ir::Usage {
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
pub(super) fn usage_to_wire(u: &ir::Usage) -> UsageOut {
    UsageOut {
        input_tokens: u
            .input_tokens
            .saturating_sub(u.cached_input_tokens.saturating_add(u.cache_creation_tokens)),
        cache_creation_input_tokens: u.cache_creation_tokens,
        cache_read_input_tokens: u.cached_input_tokens,
        output_tokens: u.output_tokens,
    }
}

pub(super) fn stop_from_wire(reason: Option<&str>, sequence: Option<String>) -> StopReason {
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
pub(super) fn stop_to_wire(stop: &StopReason) -> (&str, Option<&str>) {
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::formats::test_support::text;

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
}
