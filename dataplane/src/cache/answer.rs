//! A stored answer and its two shapes: a whole JSON body and an SSE stream, each made from
//! the other through the canonical model when the caller asks for the shape not stored.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::assemble::{self, Assembler};
use crate::formats::ApiFormat;
use crate::formats::ir::{ChatResponse, Dropped, StreamEvent, Usage};
use crate::formats::sse::{parse_events, write_event};
use crate::formats::{anthropic, openai};

/// A stored answer, in the caller's format (the key includes the format).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    pub format: ApiFormat,
    pub body: CachedBody,
    /// The provider and model that produced it, for the usage record of a hit.
    pub provider: String,
    pub model: String,
    /// What producing it cost in tokens (the saving a hit records).
    pub usage: Usage,
    pub cost_nano_usd: Option<i64>,
}

/// The answer's bytes, as the caller first received them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedBody {
    /// A whole (non-stream) JSON answer.
    Whole(Bytes),
    /// A complete SSE stream as it was relayed (through `data: [DONE]` or `message_stop`).
    Stream(Bytes),
}

impl CachedBody {
    pub fn len(&self) -> usize {
        match self {
            CachedBody::Whole(b) | CachedBody::Stream(b) => b.len(),
        }
    }
}

impl CachedAnswer {
    /// The answer as a whole JSON body in its format (from a Stream entry: decode the SSE
    /// with the format's StreamDecoder into IR events, assemble a ChatResponse — text,
    /// thinking with signatures, tool calls with their complete arguments, stop reason,
    /// usage — and encode_response it).
    ///
    /// None when the stream cannot be made whole without losing something: it is cut or
    /// ends in an error, or (OpenAI) it is not chat chunks or carries several choices or
    /// logprobs.
    pub fn whole(&self) -> Option<Bytes> {
        let sse = match &self.body {
            CachedBody::Whole(body) => return Some(body.clone()),
            CachedBody::Stream(sse) => sse,
        };
        let mut dropped = Dropped::default();
        match self.format {
            ApiFormat::OpenAi => {
                let (events, created) = openai_events(sse)?;
                let mut resp = self.assemble(events)?;
                resp.created = created;
                Some(openai::encode_response(&resp, &mut dropped))
            }
            ApiFormat::Anthropic => {
                let resp = self.assemble(anthropic_events(sse)?)?;
                Some(anthropic::encode_response(&resp, &mut dropped))
            }
        }
    }

    /// The answer as an SSE stream in its format (from a Whole entry: decode_response → IR
    /// → a well-formed event sequence Start, blocks, Finish, Usage, Done → the format's
    /// StreamEncoder; for OpenAI, `include_usage` decides whether the usage chunk is
    /// written).
    ///
    /// A stored stream is replayed as it was, except that an OpenAI stream loses or gains
    /// its usage chunk to match `include_usage` (the chunk gained carries [`Self::usage`]).
    /// None for what has no chat stream: embeddings and legacy completions, OpenAI answers
    /// with several choices or logprobs, bodies that do not decode.
    pub fn stream(&self, include_usage: bool) -> Option<Bytes> {
        match (&self.body, self.format) {
            (CachedBody::Stream(sse), ApiFormat::Anthropic) => Some(sse.clone()),
            (CachedBody::Stream(sse), ApiFormat::OpenAi) => match (include_usage, has_usage_object(sse)) {
                (true, true) | (false, false) => Some(sse.clone()),
                (false, true) => strip_usage(sse),
                (true, false) => {
                    let (mut events, _) = openai_events(sse)?;
                    let done = events.iter().position(|e| matches!(e, StreamEvent::Done))?;
                    events.insert(done, StreamEvent::Usage(self.usage));
                    let mut encoder = openai::StreamEncoder::new(true);
                    Some(encode_all(&events, |e, out| encoder.encode(e, out)))
                }
            },
            (CachedBody::Whole(body), ApiFormat::OpenAi) => {
                if !single_chat_completion(body) {
                    return None;
                }
                let resp = self.with_usage(openai::decode_response(body).ok()?);
                let mut encoder = openai::StreamEncoder::new(include_usage);
                Some(encode_all(&assemble::events(&resp), |e, out| {
                    encoder.encode(e, out)
                }))
            }
            (CachedBody::Whole(body), ApiFormat::Anthropic) => {
                let resp = self.with_usage(anthropic::decode_response(body).ok()?);
                let mut encoder = anthropic::StreamEncoder::new();
                Some(encode_all(&assemble::events(&resp), |e, out| {
                    encoder.encode(e, out)
                }))
            }
        }
    }

    fn assemble(&self, events: Vec<StreamEvent>) -> Option<ChatResponse> {
        let mut asm = Assembler::new();
        for event in events {
            asm.push(event);
        }
        asm.finish(self.usage)
    }

    /// A body that reported no usage at all gets the counts recorded with the entry.
    fn with_usage(&self, mut resp: ChatResponse) -> ChatResponse {
        if resp.usage == Usage::default() {
            resp.usage = self.usage;
        }
        resp
    }
}

fn encode_all(events: &[StreamEvent], mut encode: impl FnMut(&StreamEvent, &mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    for event in events {
        encode(event, &mut out);
    }
    out.freeze()
}

/// An Anthropic stream's IR events; None if it does not decode.
fn anthropic_events(sse: &[u8]) -> Option<Vec<StreamEvent>> {
    let mut decoder = anthropic::StreamDecoder::new();
    let mut events = Vec::new();
    for event in parse_events(sse) {
        events.extend(decoder.decode(&event).ok()?);
    }
    Some(events)
}

/// What of an OpenAI body or chunk tells whether it is one chat choice without logprobs.
#[derive(Deserialize)]
struct OpenAiShape<'a> {
    #[serde(default, borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<Value>,
    #[serde(default)]
    choices: Option<Vec<ChoiceShape>>,
}

#[derive(Deserialize)]
struct ChoiceShape {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    logprobs: Option<IgnoredAny>,
}

impl OpenAiShape<'_> {
    /// Only choice 0, and no logprobs: what the canonical model carries in full.
    fn single_plain_choice(&self) -> bool {
        self.choices
            .iter()
            .flatten()
            .all(|c| c.index.unwrap_or(0) == 0 && c.logprobs.is_none())
    }
}

/// Whether a whole OpenAI body is a `chat.completion` the canonical model holds in full.
fn single_chat_completion(body: &[u8]) -> bool {
    let Ok(shape) = serde_json::from_slice::<OpenAiShape<'_>>(body) else {
        return false;
    };
    shape.object.as_deref().is_none_or(|o| o == "chat.completion")
        && shape.choices.as_ref().is_some_and(|c| c.len() == 1)
        && shape.single_plain_choice()
}

/// An OpenAI chat stream's IR events and its `created` time; None if it does not decode
/// or holds what the canonical model cannot (other chunk objects, choices past 0, logprobs).
fn openai_events(sse: &[u8]) -> Option<(Vec<StreamEvent>, Option<i64>)> {
    let mut decoder = openai::StreamDecoder::new();
    let mut events = Vec::new();
    let mut created = None;
    for event in parse_events(sse) {
        let data = event.data.trim();
        if data != "[DONE]" && !data.is_empty() {
            let shape: OpenAiShape<'_> = serde_json::from_str(data).ok()?;
            let is_chunk = shape
                .object
                .as_deref()
                .is_none_or(|o| o == "chat.completion.chunk");
            if !is_chunk || !shape.single_plain_choice() {
                return None;
            }
            created = created.or(shape.created.as_ref().and_then(Value::as_i64));
        }
        events.extend(decoder.decode(&event).ok()?);
    }
    Some((events, created))
}

/// Whether some JSON in `sse` has a `"usage"` member whose value is an object. A quoted
/// `"usage"` followed by a colon cannot occur inside a JSON string (its quotes would be
/// escaped), so this finds members only.
fn has_usage_object(sse: &[u8]) -> bool {
    const NAME: &[u8] = b"\"usage\"";
    let mut rest = sse;
    while let Some(at) = rest.windows(NAME.len()).position(|w| w == NAME) {
        rest = rest.get(at + NAME.len()..).unwrap_or_default();
        let mut after = rest.iter().copied().filter(|b| !b.is_ascii_whitespace());
        if after.next() == Some(b':') && after.next() == Some(b'{') {
            return true;
        }
    }
    false
}

/// The stream without its usage: the usage-only chunk is dropped, and a `usage` riding on
/// a chunk with choices is removed from it. Other events are written back unchanged.
fn strip_usage(sse: &[u8]) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(sse.len());
    for event in parse_events(sse) {
        if has_usage_object(event.data.as_bytes())
            && let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(&event.data)
            && chunk.get("usage").is_some_and(Value::is_object)
        {
            let no_choices = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
            if no_choices {
                continue;
            }
            chunk.remove("usage");
            let data = serde_json::to_string(&chunk).ok()?;
            write_event(&mut out, event.event.as_deref(), &data);
            continue;
        }
        write_event(&mut out, event.event.as_deref(), &event.data);
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ir::{Part, StopReason};
    use crate::formats::sse::SseEvent;

    const OPENAI_WHOLE: &str = r#"{
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check the weather.",
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}
                ]
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
                  "prompt_tokens_details": {"cached_tokens": 4}}
    }"#;

    const ANTHROPIC_WHOLE: &str = r#"{
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc"},
            {"type": "text", "text": "Checking Paris."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}
    }"#;

    /// An OpenAI stream as a provider sends it: parallel tool calls with split arguments,
    /// and the usage chunk when it was asked for.
    fn openai_stream(with_usage: bool) -> Bytes {
        let mut chunks = vec![
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"lo \"usage\": {x}"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{\"tz\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"CET\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
        ];
        if with_usage {
            chunks.push(
                r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1700000001,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30}}"#,
            );
        }
        chunks.push("[DONE]");
        let mut out = BytesMut::new();
        for chunk in chunks {
            write_event(&mut out, None, chunk);
        }
        out.freeze()
    }

    fn anthropic_stream() -> Bytes {
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_2","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":30,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Weather "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"please."}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig-xyz"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Paris."}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"get_weather","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":2}"#),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let mut out = BytesMut::new();
        for (name, data) in events {
            write_event(&mut out, Some(name), data);
        }
        out.freeze()
    }

    fn answer(format: ApiFormat, body: CachedBody) -> CachedAnswer {
        CachedAnswer {
            format,
            body,
            provider: "p".into(),
            model: "m".into(),
            usage: Usage {
                input_tokens: 21,
                output_tokens: 9,
                ..Usage::default()
            },
            cost_nano_usd: Some(1234),
        }
    }

    /// Decodes a stream with the format's own decoder, feeding it byte by byte-ish chunks
    /// as they would arrive, and folds it into an answer.
    fn decode_stream(format: ApiFormat, sse: &[u8]) -> (Vec<StreamEvent>, ChatResponse) {
        let mut openai = openai::StreamDecoder::new();
        let mut anthropic = anthropic::StreamDecoder::new();
        let mut events = Vec::new();
        let mut framer = crate::formats::sse::SseFramer::default();
        for piece in sse.chunks(7) {
            if let Some(whole) = framer.push(Bytes::copy_from_slice(piece)).unwrap() {
                for event in parse_events(&whole) {
                    events.extend(match format {
                        ApiFormat::OpenAi => openai.decode(&event).unwrap(),
                        ApiFormat::Anthropic => anthropic.decode(&event).unwrap(),
                    });
                }
            }
        }
        assert_eq!(framer.pending(), 0);
        let mut asm = Assembler::new();
        for event in events.clone() {
            asm.push(event);
        }
        (events, asm.finish(Usage::default()).unwrap())
    }

    fn sse_data(sse: &[u8]) -> Vec<SseEvent> {
        parse_events(sse)
    }

    fn usage_chunks(sse: &[u8]) -> usize {
        sse_data(sse)
            .iter()
            .filter(|e| {
                serde_json::from_str::<Value>(&e.data)
                    .ok()
                    .and_then(|v| v.get("usage").cloned())
                    .is_some_and(|u| u.is_object())
            })
            .count()
    }

    #[test]
    fn openai_whole_replays_as_a_stream() {
        let cached = answer(ApiFormat::OpenAi, CachedBody::Whole(Bytes::from(OPENAI_WHOLE)));
        let sse = cached.stream(true).unwrap();
        let (events, replayed) = decode_stream(ApiFormat::OpenAi, &sse);
        let original = openai::decode_response(OPENAI_WHOLE.as_bytes()).unwrap();
        assert_eq!(replayed.parts, original.parts);
        assert_eq!(replayed.stop, StopReason::ToolUse);
        assert_eq!(
            (replayed.id.as_str(), replayed.model.as_str()),
            ("chatcmpl-1", "gpt-4o-2024-08-06")
        );
        assert_eq!(replayed.usage, original.usage);
        assert_eq!(events.last(), Some(&StreamEvent::Done));
        assert_eq!(sse_data(&sse).last().unwrap().data, "[DONE]");
        assert_eq!(usage_chunks(&sse), 1);
    }

    #[test]
    fn openai_replay_without_include_usage_has_no_usage_chunk() {
        let cached = answer(ApiFormat::OpenAi, CachedBody::Whole(Bytes::from(OPENAI_WHOLE)));
        let sse = cached.stream(false).unwrap();
        assert_eq!(usage_chunks(&sse), 0);
        let (events, replayed) = decode_stream(ApiFormat::OpenAi, &sse);
        assert!(!events.iter().any(|e| matches!(e, StreamEvent::Usage(_))));
        assert_eq!(replayed.parts.len(), 3);
        assert_eq!(sse_data(&sse).last().unwrap().data, "[DONE]");
    }

    #[test]
    fn anthropic_whole_replays_as_a_stream() {
        let cached = answer(
            ApiFormat::Anthropic,
            CachedBody::Whole(Bytes::from(ANTHROPIC_WHOLE)),
        );
        // `include_usage` is an OpenAI notion: Anthropic streams always carry usage.
        for include_usage in [true, false] {
            let sse = cached.stream(include_usage).unwrap();
            let (events, replayed) = decode_stream(ApiFormat::Anthropic, &sse);
            let original = anthropic::decode_response(ANTHROPIC_WHOLE.as_bytes()).unwrap();
            assert_eq!(replayed.parts, original.parts);
            assert!(matches!(
                &replayed.parts[0],
                Part::Thinking { signature: Some(s), .. } if s == "sig-abc"
            ));
            assert_eq!(replayed.stop, StopReason::ToolUse);
            assert_eq!(replayed.usage, original.usage);
            assert_eq!(replayed.id, "msg_1");
            assert_eq!(events.last(), Some(&StreamEvent::Done));
            let last = sse_data(&sse).pop().unwrap();
            assert_eq!(last.event.as_deref(), Some("message_stop"));
        }
    }

    #[test]
    fn openai_stream_makes_a_whole_answer() {
        let sse = openai_stream(true);
        let (_, streamed) = decode_stream(ApiFormat::OpenAi, &sse);
        let cached = answer(ApiFormat::OpenAi, CachedBody::Stream(sse));
        let body = cached.whole().unwrap();
        let whole = openai::decode_response(&body).unwrap();
        assert_eq!(whole.parts, streamed.parts);
        assert_eq!(
            whole.parts,
            vec![
                Part::Text {
                    text: "Hello \"usage\": {x}".into(),
                    cache_control: None
                },
                Part::ToolCall {
                    id: "call_a".into(),
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                Part::ToolCall {
                    id: "call_b".into(),
                    name: "get_time".into(),
                    arguments: r#"{"tz":"CET"}"#.into()
                },
            ]
        );
        assert_eq!(whole.stop, StopReason::ToolUse);
        assert_eq!(whole.created, Some(1700000001));
        assert_eq!((whole.usage.input_tokens, whole.usage.output_tokens), (21, 9));
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["object"], "chat.completion");
        assert_eq!(json["id"], "chatcmpl-2");
    }

    #[test]
    fn anthropic_stream_makes_a_whole_answer() {
        let sse = anthropic_stream();
        let (_, streamed) = decode_stream(ApiFormat::Anthropic, &sse);
        let cached = answer(ApiFormat::Anthropic, CachedBody::Stream(sse.clone()));
        let body = cached.whole().unwrap();
        let whole = anthropic::decode_response(&body).unwrap();
        assert_eq!(whole.parts, streamed.parts);
        assert_eq!(
            whole.parts[0],
            Part::Thinking {
                text: "Weather please.".into(),
                signature: Some("sig-xyz".into())
            }
        );
        assert!(matches!(&whole.parts[1], Part::Text { text, .. } if text == "Checking Paris."));
        assert!(matches!(
            &whole.parts[2],
            Part::ToolCall { id, arguments, .. } if id == "toolu_2"
                && serde_json::from_str::<Value>(arguments).unwrap() == serde_json::json!({"city": "Paris"})
        ));
        assert_eq!(whole.stop, StopReason::ToolUse);
        assert_eq!((whole.usage.input_tokens, whole.usage.output_tokens), (30, 15));
        // A stored stream replays as it was relayed.
        assert_eq!(cached.stream(false).unwrap(), sse);
    }

    #[test]
    fn openai_stream_replay_matches_include_usage() {
        let with = answer(ApiFormat::OpenAi, CachedBody::Stream(openai_stream(true)));
        assert_eq!(with.stream(true).unwrap(), openai_stream(true));
        let stripped = with.stream(false).unwrap();
        assert_eq!(usage_chunks(&stripped), 0);
        assert_eq!(
            sse_data(&stripped).len(),
            sse_data(&openai_stream(true)).len() - 1
        );
        let (_, replayed) = decode_stream(ApiFormat::OpenAi, &stripped);
        assert_eq!(replayed.parts.len(), 3);

        let without = answer(ApiFormat::OpenAi, CachedBody::Stream(openai_stream(false)));
        assert_eq!(without.stream(false).unwrap(), openai_stream(false));
        let gained = without.stream(true).unwrap();
        assert_eq!(usage_chunks(&gained), 1);
        let (events, replayed) = decode_stream(ApiFormat::OpenAi, &gained);
        assert!(events.contains(&StreamEvent::Usage(without.usage)));
        assert_eq!(
            replayed.parts,
            decode_stream(ApiFormat::OpenAi, &openai_stream(false)).1.parts
        );
        assert_eq!(sse_data(&gained).last().unwrap().data, "[DONE]");
    }

    #[test]
    fn usage_on_a_choice_chunk_is_removed_not_the_chunk() {
        let mut sse = BytesMut::new();
        write_event(
            &mut sse,
            None,
            r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        );
        write_event(&mut sse, None, "[DONE]");
        let cached = answer(ApiFormat::OpenAi, CachedBody::Stream(sse.freeze()));
        let stripped = cached.stream(false).unwrap();
        assert_eq!(usage_chunks(&stripped), 0);
        let (_, replayed) = decode_stream(ApiFormat::OpenAi, &stripped);
        assert!(matches!(&replayed.parts[..], [Part::Text { text, .. }] if text == "Hi"));
    }

    #[test]
    fn what_has_no_chat_stream_gives_none() {
        let embeddings = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        let cached = answer(ApiFormat::OpenAi, CachedBody::Whole(Bytes::from(embeddings)));
        assert_eq!(cached.stream(true), None);
        assert_eq!(cached.whole(), Some(Bytes::from(embeddings)));

        let completion = r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"text":"Hi","index":0,"logprobs":null,"finish_reason":"stop"}]}"#;
        let cached = answer(ApiFormat::OpenAi, CachedBody::Whole(Bytes::from(completion)));
        assert_eq!(cached.stream(false), None);

        let two = OPENAI_WHOLE.replace(
            r#""finish_reason": "tool_calls"
        }]"#,
            r#""finish_reason": "tool_calls"
        }, {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}]"#,
        );
        assert_ne!(two, OPENAI_WHOLE);
        let cached = answer(ApiFormat::OpenAi, CachedBody::Whole(Bytes::from(two)));
        assert_eq!(cached.stream(true), None);

        let logprobs = OPENAI_WHOLE.replace(r#""logprobs": null"#, r#""logprobs": {"content": []}"#);
        let cached = answer(ApiFormat::OpenAi, CachedBody::Whole(Bytes::from(logprobs)));
        assert_eq!(cached.stream(true), None);
    }

    #[test]
    fn cut_or_failed_streams_make_no_whole_answer() {
        let full = openai_stream(true);
        let cut = full.slice(..full.len() - "data: [DONE]\n\n".len());
        let cached = answer(ApiFormat::OpenAi, CachedBody::Stream(cut));
        assert_eq!(cached.whole(), None);

        let mut failed = BytesMut::new();
        write_event(
            &mut failed,
            Some("message_start"),
            r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"c","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}"#,
        );
        write_event(
            &mut failed,
            Some("error"),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        let cached = answer(ApiFormat::Anthropic, CachedBody::Stream(failed.freeze()));
        assert_eq!(cached.whole(), None);

        let mut choices = BytesMut::new();
        write_event(
            &mut choices,
            None,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":1,"delta":{"content":"B"}}]}"#,
        );
        write_event(&mut choices, None, "[DONE]");
        let cached = answer(ApiFormat::OpenAi, CachedBody::Stream(choices.freeze()));
        assert_eq!(cached.whole(), None);
    }
}
