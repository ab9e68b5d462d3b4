//! Whole Chat Completions answers (`chat.completion`), their usage and finish reasons, to and
//! from the canonical model.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::error_fields;
use super::request::{arguments_text, decode_thinking_blocks};
use super::usage::WireUsage;
use super::{
    InFunction, InToolCall, OutFunctionCall, OutThinkingBlock, OutToolCall, OutUsage, WireThinkingBlock,
};
use crate::formats::ir::{self, ChatResponse, Part, StopReason};

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

pub(super) fn stop_from_wire(reason: &str) -> StopReason {
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
pub(super) fn stop_to_wire(stop: &StopReason) -> (&'static str, bool) {
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

pub(super) fn unix_now() -> i64 {
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
///
/// [`decode_request`]: super::decode_request
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::formats::ir::{ImageSource, Usage};
    use crate::formats::openai::test_support::{call, decode};
    use crate::formats::test_support::{assistant, text};

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
}
