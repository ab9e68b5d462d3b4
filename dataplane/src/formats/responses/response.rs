//! The canonical answer → a Responses API `response` object, for a Responses caller whose
//! route's provider answered in another format.

use bytes::Bytes;
use serde_json::{Value, json};

use super::reasoning;
use crate::formats::ir::{ChatRequest, ChatResponse, Part, StopReason, ToolChoice, Usage};

/// `status` and `incomplete_details` for a stop reason.
pub(super) fn status(stop: &StopReason) -> (&'static str, Value) {
    match stop {
        StopReason::MaxTokens => ("incomplete", json!({"reason": "max_output_tokens"})),
        StopReason::ContentFilter => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The `usage` object, with its detail objects.
pub(super) fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// The response id for a provider's answer id.
pub(super) fn response_id(id: &str) -> String {
    if id.starts_with("resp_") {
        id.to_owned()
    } else {
        format!("resp_{id}")
    }
}

/// What the response says of the request: the settings the SDKs read back.
pub fn echo(req: &ChatRequest) -> serde_json::Map<String, Value> {
    let tool_choice = match &req.tool_choice {
        None | Some(ToolChoice::Auto) => json!("auto"),
        Some(ToolChoice::None) => json!("none"),
        Some(ToolChoice::Required) => json!("required"),
        Some(ToolChoice::Tool(name)) => json!({"type": "function", "name": name}),
    };
    let tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| {
            json!({"type": "function", "name": t.name, "description": t.description,
                   "parameters": t.parameters, "strict": false})
        })
        .collect();
    let mut m = serde_json::Map::new();
    m.insert(
        "parallel_tool_calls".into(),
        json!(req.parallel_tool_calls.unwrap_or(true)),
    );
    m.insert("tool_choice".into(), tool_choice);
    m.insert("tools".into(), Value::Array(tools));
    m.insert("temperature".into(), json!(req.temperature));
    m.insert("top_p".into(), json!(req.top_p));
    m.insert("max_output_tokens".into(), json!(req.max_tokens));
    m.insert("store".into(), json!(false));
    m
}

/// The output items of a complete answer: reasoning first, then the message, then the calls.
/// With `carry_thinking` (the answer is Anthropic's, whose signatures only Anthropic reads), the
/// reasoning item carries signed and redacted thinking in `encrypted_content`, so that a later
/// turn can give it back (`reasoning`).
pub(super) fn output(id: &str, parts: &[Part], carry_thinking: bool) -> Vec<Value> {
    let mut reasoning = Vec::new();
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for p in parts {
        match p {
            Part::Thinking { text: t, .. } if !t.is_empty() => {
                reasoning.push(json!({"type": "summary_text", "text": t}));
            }
            Part::Text { text: t, .. } => text.push(t.as_str()),
            Part::ToolCall {
                id: call_id,
                name,
                arguments,
            } => calls.push(json!({
                "type": "function_call",
                "id": format!("fc_{call_id}"),
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
                "status": "completed",
            })),
            _ => {}
        }
    }
    let mut items = Vec::new();
    let sealed = carry_thinking.then(|| reasoning::seal(parts)).flatten();
    if !reasoning.is_empty() || sealed.is_some() {
        let mut item = json!({"type": "reasoning", "id": format!("rs_{id}"), "summary": reasoning});
        if let Some(sealed) = sealed {
            item["encrypted_content"] = Value::String(sealed);
        }
        items.push(item);
    }
    if !text.is_empty() {
        items.push(json!({
            "type": "message",
            "id": format!("msg_{id}"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text.concat(), "annotations": [], "logprobs": []}],
        }));
    }
    items.extend(calls);
    items
}

/// A complete answer as a `response` object.
/// `carry_thinking`: see [`output`].
pub fn encode_response(answer: &ChatResponse, req: &ChatRequest, carry_thinking: bool) -> Bytes {
    let (status, incomplete) = status(&answer.stop);
    let mut body = echo(req);
    body.insert("id".into(), json!(response_id(&answer.id)));
    body.insert("object".into(), json!("response"));
    body.insert(
        "created_at".into(),
        json!(
            answer
                .created
                .unwrap_or_else(|| drover_proto::model::now_unix_ms() / 1000)
        ),
    );
    body.insert("status".into(), json!(status));
    body.insert("incomplete_details".into(), incomplete);
    body.insert("error".into(), Value::Null);
    body.insert("model".into(), json!(answer.model));
    body.insert(
        "output".into(),
        Value::Array(output(&answer.id, &answer.parts, carry_thinking)),
    );
    body.insert("usage".into(), usage(&answer.usage));
    Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_anthropics_signed_thinking_is_carried_for_the_next_turn() {
        let parts = [
            Part::Thinking {
                text: "Weigh the options.".into(),
                signature: Some("sig-from-the-provider".into()),
            },
            Part::Text {
                text: "Done.".into(),
                cache_control: None,
            },
        ];
        let carried = output("r1", &parts, true);
        assert_eq!(carried[0]["type"], "reasoning");
        let sealed = carried[0]["encrypted_content"].as_str().unwrap();
        assert_eq!(reasoning::open(sealed).unwrap(), parts[..1]);
        // Another provider's signature (Gemini's thoughtSignature) would be refused by Anthropic
        // after a failover: the summary stays, nothing is carried.
        let other = output("r1", &parts, false);
        assert_eq!(other[0]["summary"][0]["text"], "Weigh the options.");
        assert!(other[0].get("encrypted_content").is_none(), "{other:?}");
        assert_eq!(other[1]["content"][0]["text"], "Done.");
    }
}
