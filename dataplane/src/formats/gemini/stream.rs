//! `streamGenerateContent?alt=sse` streams, decoded into canonical stream events.

use serde_json::Value;

use super::error::error_info;
use super::response::{arguments_text, stop_reason};
use super::{CallIds, GenerateContentResponse, ResponsePart};
use crate::formats::ir::{self, BlockKind, Delta, StopReason, StreamEvent, Usage};
use crate::formats::sse::SseEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    Thinking,
}

/// Turns the events of `streamGenerateContent?alt=sse` (each `data:` a whole
/// `GenerateContentResponse`) into canonical stream events.
///
/// Text and thought parts open a text or thinking block that stays open while the same kind
/// keeps coming; a function call arrives whole and becomes one tool call block (start, all
/// its arguments, stop). The stream has no terminal event of its own: the last chunk
/// carries `finishReason` and usage, and [`StreamDecoder::finish`] emits the end once the
/// upstream body is over.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    open: Option<(usize, OpenBlock)>,
    next_index: usize,
    ids: CallIds,
    called_tools: bool,
    finish_reason: Option<String>,
    blocked: bool,
    usage: Option<Usage>,
    /// `finish` ran, or an error ended the stream: nothing more is emitted.
    ended: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event. Empty events are skipped; an `{"error":...}` event becomes a
    /// [`StreamEvent::Error`], after which nothing more is emitted.
    pub fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ir::DecodeError> {
        let data = event.data.trim();
        if self.ended || data.is_empty() || data == "[DONE]" {
            return Ok(Vec::new());
        }
        let chunk: GenerateContentResponse = serde_json::from_str(data)
            .map_err(|e| ir::DecodeError(format!("invalid Gemini stream chunk: {e}")))?;
        let mut out = Vec::new();
        if let Some(error) = &chunk.error {
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500);
            self.ended = true;
            out.push(StreamEvent::Error(error_info(status, error)));
            return Ok(out);
        }
        if !self.started {
            self.started = true;
            self.ids = CallIds::new(chunk.response_id.as_deref());
            out.push(StreamEvent::Start {
                id: chunk.response_id.clone().unwrap_or_default(),
                model: chunk.model_version.clone().unwrap_or_default(),
            });
        }
        if let Some(usage) = &chunk.usage_metadata {
            self.usage = Some(usage.to_ir());
        }
        if chunk
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some())
        {
            self.blocked = true;
        }
        if let Some(candidate) = chunk.candidates.first() {
            for part in candidate.content.iter().flat_map(|c| &c.parts) {
                self.part(part, &mut out);
            }
            if let Some(reason) = &candidate.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
        Ok(out)
    }

    fn part(&mut self, part: &ResponsePart, out: &mut Vec<StreamEvent>) {
        if let Some(call) = &part.function_call {
            self.close(out);
            self.called_tools = true;
            let index = self.take_index();
            out.push(StreamEvent::BlockStart {
                index,
                kind: BlockKind::ToolCall {
                    id: self.ids.id_for(call),
                    name: call.name.clone(),
                },
            });
            out.push(StreamEvent::Delta {
                index,
                delta: Delta::ToolArguments(arguments_text(call)),
            });
            out.push(StreamEvent::BlockStop { index });
            return;
        }
        let Some(text) = &part.text else { return };
        if part.thought {
            let signature = part.thought_signature.as_ref().filter(|s| !s.is_empty());
            if text.is_empty() && signature.is_none() {
                return;
            }
            let index = self.ensure_open(OpenBlock::Thinking, out);
            if !text.is_empty() {
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Thinking(text.clone()),
                });
            }
            if let Some(signature) = signature {
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Signature(signature.clone()),
                });
            }
        } else if !text.is_empty() {
            let index = self.ensure_open(OpenBlock::Text, out);
            out.push(StreamEvent::Delta {
                index,
                delta: Delta::Text(text.clone()),
            });
        }
    }

    fn take_index(&mut self) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        index
    }

    /// The index of the open block of this kind, opening it (and closing another) if needed.
    fn ensure_open(&mut self, kind: OpenBlock, out: &mut Vec<StreamEvent>) -> usize {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.take_index();
        self.open = Some((index, kind));
        out.push(StreamEvent::BlockStart {
            index,
            kind: match kind {
                OpenBlock::Text => BlockKind::Text,
                OpenBlock::Thinking => BlockKind::Thinking,
            },
        });
        index
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Events to emit when the upstream stream ends: if a finishReason was seen →
    /// (BlockStop for the open block), Finish, Usage, Done; else nothing (the relay reports
    /// an incomplete stream). Nothing on a second call, or after an error event.
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        if self.ended || !self.saw_finish() {
            return Vec::new();
        }
        self.ended = true;
        let mut out = Vec::new();
        self.close(&mut out);
        let stop = match &self.finish_reason {
            Some(reason) => stop_reason(reason, self.called_tools),
            None => StopReason::ContentFilter,
        };
        out.push(StreamEvent::Finish { stop });
        if let Some(usage) = self.usage {
            out.push(StreamEvent::Usage(usage));
        }
        out.push(StreamEvent::Done);
        out
    }

    /// Whether the stream said how it ended (a `finishReason`, or a blocked prompt).
    pub fn saw_finish(&self) -> bool {
        self.finish_reason.is_some() || self.blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ir::ErrorKind;
    use crate::formats::sse::parse_events;
    use crate::formats::test_support::{data_event, decode_pieces};

    /// A recorded-shape stream: thoughts, text in chunks, a function call, then the last
    /// chunk with the finish reason and usage. Events end with `\r\n\r\n`, as Gemini's do.
    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Weighing** the ask\",\"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 31,\"totalTokenCount\": 31},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"I'll check \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 31,\"totalTokenCount\": 31},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"the weather — \\u00e9t\\u00e9.\"}],\"role\": \"model\"},\"index\": 0}],\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"city\": \"Paris\"}},\"thoughtSignature\": \"CiIBVKhc\"},{\"functionCall\": {\"name\": \"get_time\",\"args\": {}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 31,\"candidatesTokenCount\": 24,\"totalTokenCount\": 95,\"thoughtsTokenCount\": 40,\"cachedContentTokenCount\": 8},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"7Z1QaKn\"}\r\n\r\n",
    );

    fn expected_stream() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "7Z1QaKn".into(),
                model: "gemini-2.5-flash".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Thinking("**Weighing** the ask".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::Text("I'll check ".into()),
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::Text("the weather — été.".into()),
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::ToolCall {
                    id: "call_7Z1QaKn_0".into(),
                    name: "get_weather".into(),
                },
            },
            StreamEvent::Delta {
                index: 2,
                delta: Delta::ToolArguments(r#"{"city":"Paris"}"#.into()),
            },
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::BlockStart {
                index: 3,
                kind: BlockKind::ToolCall {
                    id: "call_7Z1QaKn_1".into(),
                    name: "get_time".into(),
                },
            },
            StreamEvent::Delta {
                index: 3,
                delta: Delta::ToolArguments("{}".into()),
            },
            StreamEvent::BlockStop { index: 3 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 31,
                output_tokens: 64,
                cached_input_tokens: 8,
                cache_creation_tokens: 0,
                reasoning_tokens: 40,
            }),
            StreamEvent::Done,
        ]
    }

    /// Frames, parses and decodes `parts` in order, then finishes.
    fn run_stream(parts: &[&[u8]]) -> Vec<StreamEvent> {
        let mut decoder = StreamDecoder::new();
        let (mut out, framer) = decode_pieces(&mut decoder, parts);
        assert_eq!(framer.pending(), 0);
        out.extend(decoder.finish());
        out
    }

    #[test]
    fn stream_decodes_the_same_however_the_bytes_are_split() {
        let bytes = STREAM.as_bytes();
        let want = expected_stream();
        assert_eq!(run_stream(&[bytes]), want);
        for i in 0..=bytes.len() {
            assert_eq!(run_stream(&[&bytes[..i], &bytes[i..]]), want, "split at {i}");
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run_stream(&single), want);
    }

    #[test]
    fn finish_needs_a_finish_reason() {
        let events = parse_events(STREAM.as_bytes());
        let (last, rest) = events.split_last().unwrap();

        let mut cut = StreamDecoder::new();
        for event in rest {
            cut.decode(event).unwrap();
        }
        assert!(!cut.saw_finish());
        assert_eq!(cut.finish(), vec![], "a cut stream ends with nothing");

        let mut whole = StreamDecoder::new();
        for event in rest {
            whole.decode(event).unwrap();
        }
        whole.decode(last).unwrap();
        assert!(whole.saw_finish());
        let end = whole.finish();
        assert_eq!(end.last(), Some(&StreamEvent::Done));
        assert_eq!(whole.finish(), vec![], "finish emits once");
    }

    #[test]
    fn finish_closes_an_open_text_block() {
        let mut decoder = StreamDecoder::new();
        let first = decoder
            .decode(&data_event(
                r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"}}],"modelVersion":"m","responseId":"r"}"#,
            ))
            .unwrap();
        assert_eq!(
            first,
            vec![
                StreamEvent::Start {
                    id: "r".into(),
                    model: "m".into()
                },
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::Text
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Text("Hi".into())
                },
            ]
        );
        // The last chunk: empty text, a signature on it, the finish reason, no usage.
        let last = decoder
            .decode(&data_event(
                r#"{"candidates":[{"content":{"parts":[{"text":"","thoughtSignature":"x"}],"role":"model"},"finishReason":"MAX_TOKENS"}],"modelVersion":"m","responseId":"r"}"#,
            ))
            .unwrap();
        assert_eq!(last, vec![]);
        assert_eq!(
            decoder.finish(),
            vec![
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::Finish {
                    stop: StopReason::MaxTokens
                },
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn stream_thought_signatures_and_blocked_prompts() {
        let mut decoder = StreamDecoder::new();
        let got = decoder
            .decode(&data_event(
                r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"","thought":true,"thoughtSignature":"sig"}]}}]}"#,
            ))
            .unwrap();
        assert_eq!(
            got[1..],
            [
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::Thinking
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Thinking("plan".into())
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Signature("sig".into())
                },
            ]
        );

        let mut blocked = StreamDecoder::new();
        blocked
            .decode(&data_event(
                r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3},"responseId":"b"}"#,
            ))
            .unwrap();
        assert!(blocked.saw_finish());
        assert_eq!(
            blocked.finish(),
            vec![
                StreamEvent::Finish {
                    stop: StopReason::ContentFilter
                },
                StreamEvent::Usage(Usage {
                    input_tokens: 3,
                    ..Usage::default()
                }),
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn stream_errors_end_the_stream() {
        let mut decoder = StreamDecoder::new();
        let event = SseEvent {
            event: None,
            data: r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#.into(),
        };
        assert_eq!(
            decoder.decode(&event).unwrap(),
            vec![StreamEvent::Error(ir::ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "The model is overloaded. Please try again later.".into(),
            })]
        );
        assert_eq!(decoder.finish(), vec![]);
        assert!(
            decoder
                .decode(&SseEvent {
                    event: None,
                    data: "not json".into()
                })
                .unwrap()
                .is_empty(),
            "nothing after an error"
        );

        let mut fresh = StreamDecoder::new();
        assert!(
            fresh
                .decode(&SseEvent {
                    event: None,
                    data: "{not json".into()
                })
                .is_err()
        );
        assert!(
            fresh
                .decode(&SseEvent {
                    event: None,
                    data: String::new()
                })
                .unwrap()
                .is_empty()
        );
    }
}
