//! Whole `generateContent` answers, their usage and finish reasons, decoded into the canonical
//! model.

use serde_json::Value;

use super::{CallIds, FunctionCall, GenerateContentResponse, UsageMetadata};
use crate::formats::ir::{self, Part, StopReason};

/// Gemini's finish reason in canonical terms. `STOP` after a function call is a tool use.
pub(super) fn stop_reason(reason: &str, called_tools: bool) -> StopReason {
    match reason {
        "STOP" if called_tools => StopReason::ToolUse,
        "STOP" => StopReason::EndTurn,
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::ContentFilter
        }
        other => StopReason::Other(other.to_owned()),
    }
}

pub(super) fn arguments_text(call: &FunctionCall) -> String {
    match &call.args {
        Some(args @ Value::Object(_)) => args.to_string(),
        _ => "{}".to_owned(),
    }
}

/// A `generateContent` answer in canonical terms (the first candidate).
pub fn decode_response(body: &[u8]) -> Result<ir::ChatResponse, ir::DecodeError> {
    let response: GenerateContentResponse =
        serde_json::from_slice(body).map_err(|e| ir::DecodeError(format!("invalid Gemini response: {e}")))?;
    let blocked = response
        .prompt_feedback
        .as_ref()
        .is_some_and(|f| f.block_reason.is_some());
    let Some(candidate) = response.candidates.first() else {
        if blocked {
            return Ok(ir::ChatResponse {
                id: response.response_id.unwrap_or_default(),
                model: response.model_version.unwrap_or_default(),
                parts: Vec::new(),
                stop: StopReason::ContentFilter,
                usage: response
                    .usage_metadata
                    .as_ref()
                    .map(UsageMetadata::to_ir)
                    .unwrap_or_default(),
                created: None,
            });
        }
        return Err(ir::DecodeError("Gemini response has no candidates".into()));
    };

    let mut ids = CallIds::new(response.response_id.as_deref());
    let mut parts: Vec<Part> = Vec::new();
    let mut called_tools = false;
    for part in candidate.content.iter().flat_map(|c| &c.parts) {
        if let Some(call) = &part.function_call {
            called_tools = true;
            parts.push(Part::ToolCall {
                id: ids.id_for(call),
                name: call.name.clone(),
                arguments: arguments_text(call),
            });
            continue;
        }
        let Some(text) = &part.text else { continue };
        if part.thought {
            if let Some(Part::Thinking {
                text: previous,
                signature,
            }) = parts.last_mut()
            {
                previous.push_str(text);
                if part.thought_signature.is_some() {
                    signature.clone_from(&part.thought_signature);
                }
            } else {
                parts.push(Part::Thinking {
                    text: text.clone(),
                    signature: part.thought_signature.clone(),
                });
            }
        } else if let Some(Part::Text { text: previous, .. }) = parts.last_mut() {
            previous.push_str(text);
        } else if !text.is_empty() {
            parts.push(Part::Text {
                text: text.clone(),
                cache_control: None,
            });
        }
    }
    let stop = match candidate.finish_reason.as_deref() {
        Some(reason) => stop_reason(reason, called_tools),
        None if called_tools => StopReason::ToolUse,
        None => StopReason::EndTurn,
    };
    Ok(ir::ChatResponse {
        id: response.response_id.unwrap_or_default(),
        model: response.model_version.unwrap_or_default(),
        parts,
        stop,
        usage: response
            .usage_metadata
            .as_ref()
            .map(UsageMetadata::to_ir)
            .unwrap_or_default(),
        created: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ir::{ChatResponse, Usage};
    use crate::formats::test_support::text;

    #[test]
    fn decodes_text_with_usage() {
        let body = br#"{
          "candidates": [{
            "content": { "parts": [{ "text": "Hello" }, { "text": " there!" }], "role": "model" },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{ "category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE" }]
          }],
          "usageMetadata": {
            "promptTokenCount": 12, "candidatesTokenCount": 3, "totalTokenCount": 15,
            "cachedContentTokenCount": 4,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 12 }]
          },
          "modelVersion": "gemini-2.5-flash",
          "responseId": "mbtQaOTmFZmD1dkP"
        }"#;
        let got = decode_response(body).unwrap();
        assert_eq!(
            got,
            ChatResponse {
                id: "mbtQaOTmFZmD1dkP".into(),
                model: "gemini-2.5-flash".into(),
                parts: vec![text("Hello there!")],
                stop: StopReason::EndTurn,
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                    cached_input_tokens: 4,
                    cache_creation_tokens: 0,
                    reasoning_tokens: 0,
                },
                created: None,
            }
        );
    }

    #[test]
    fn decodes_parallel_function_calls() {
        let body = br#"{
          "candidates": [{
            "content": { "role": "model", "parts": [
              { "text": "Let me check." },
              { "functionCall": { "name": "get_weather", "args": { "city": "Paris" } }, "thoughtSignature": "CiQB" },
              { "functionCall": { "name": "get_weather", "args": { "city": "Rome" } } },
              { "functionCall": { "id": "given-id", "name": "now" } }
            ] },
            "finishReason": "STOP",
            "index": 0
          }],
          "usageMetadata": { "promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 70 },
          "modelVersion": "gemini-2.5-pro",
          "responseId": "r-1/x"
        }"#;
        let got = decode_response(body).unwrap();
        assert_eq!(got.stop, StopReason::ToolUse);
        assert_eq!(
            got.parts,
            vec![
                text("Let me check."),
                Part::ToolCall {
                    id: "call_r-1x_0".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                Part::ToolCall {
                    id: "call_r-1x_1".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Rome"}"#.into()
                },
                Part::ToolCall {
                    id: "given-id".into(),
                    name: "now".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(got.usage.input_tokens, 50);
        assert_eq!(got.usage.output_tokens, 20);
    }

    #[test]
    fn calls_without_a_response_id_still_get_distinct_ids() {
        let body = br#"{"candidates":[{"content":{"parts":[
            {"functionCall":{"name":"a","args":{}}},{"functionCall":{"name":"b","args":{}}}]},"finishReason":"STOP"}]}"#;
        let ids = |r: ChatResponse| -> Vec<String> {
            r.parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::ToolCall { id, .. } => Some(id),
                    _ => None,
                })
                .collect()
        };
        let one = ids(decode_response(body).unwrap());
        let two = ids(decode_response(body).unwrap());
        assert_eq!(one.len(), 2);
        assert_ne!(one[0], one[1]);
        assert_ne!(one, two, "ids differ between answers");
        assert!(one[0].starts_with("call_"));
    }

    #[test]
    fn decodes_thoughts_and_reasoning_tokens() {
        let body = br#"{
          "candidates": [{
            "content": { "role": "model", "parts": [
              { "text": "**Planning**\nThe user wants", "thought": true },
              { "text": " a haiku.", "thought": true, "thoughtSignature": "EtYBCtMB" },
              { "text": "Leaves fall" }
            ] },
            "finishReason": "MAX_TOKENS"
          }],
          "usageMetadata": { "promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 30,
                             "toolUsePromptTokenCount": 1, "totalTokenCount": 42 },
          "modelVersion": "gemini-2.5-flash",
          "responseId": "t1"
        }"#;
        let got = decode_response(body).unwrap();
        assert_eq!(
            got.parts,
            vec![
                Part::Thinking {
                    text: "**Planning**\nThe user wants a haiku.".into(),
                    signature: Some("EtYBCtMB".into())
                },
                text("Leaves fall"),
            ]
        );
        assert_eq!(got.stop, StopReason::MaxTokens);
        assert_eq!(
            got.usage,
            Usage {
                input_tokens: 10,
                output_tokens: 32,
                cached_input_tokens: 0,
                cache_creation_tokens: 0,
                reasoning_tokens: 30,
            }
        );
    }

    #[test]
    fn finish_reasons() {
        let cases = [
            ("STOP", false, StopReason::EndTurn),
            ("STOP", true, StopReason::ToolUse),
            ("MAX_TOKENS", true, StopReason::MaxTokens),
            ("SAFETY", false, StopReason::ContentFilter),
            ("RECITATION", false, StopReason::ContentFilter),
            ("BLOCKLIST", false, StopReason::ContentFilter),
            ("PROHIBITED_CONTENT", false, StopReason::ContentFilter),
            ("SPII", false, StopReason::ContentFilter),
            ("IMAGE_SAFETY", false, StopReason::ContentFilter),
            (
                "MALFORMED_FUNCTION_CALL",
                false,
                StopReason::Other("MALFORMED_FUNCTION_CALL".into()),
            ),
            ("OTHER", false, StopReason::Other("OTHER".into())),
        ];
        for (reason, called, want) in cases {
            assert_eq!(stop_reason(reason, called), want, "{reason}");
        }
    }

    #[test]
    fn decodes_a_safety_stop_and_a_blocked_prompt() {
        let body = br#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[
            {"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]}],
            "usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"modelVersion":"gemini-2.0-flash","responseId":"s"}"#;
        let got = decode_response(body).unwrap();
        assert_eq!(got.stop, StopReason::ContentFilter);
        assert!(got.parts.is_empty());
        assert_eq!(got.usage.input_tokens, 7);

        let blocked = br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},
            "usageMetadata":{"promptTokenCount":5,"totalTokenCount":5},"modelVersion":"gemini-2.5-flash"}"#;
        let got = decode_response(blocked).unwrap();
        assert_eq!(got.stop, StopReason::ContentFilter);
        assert_eq!(got.usage.input_tokens, 5);
    }

    #[test]
    fn undecodable_answers_are_errors() {
        for body in [&b"not json"[..], b"[]", b"{}", br#"{"candidates":"x"}"#] {
            assert!(
                decode_response(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
