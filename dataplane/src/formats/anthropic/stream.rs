//! Messages streams: decoded into canonical stream events and encoded out of them, and read for
//! their usage and their end as they are relayed (`EventTap`, `UsageTally`).

use std::borrow::Cow;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{default_status, error_wire, kind_from_type};
use super::response::{stop_from_wire, stop_to_wire, usage_from_wire, usage_to_wire};
use super::{
    Block, DeltaWire, ErrorEnvelope, ErrorOut, MessageBody, RedactedThinkingBlock, StopOut, StreamOut,
    ThinkingBlock, ToolInput, TypeTag, UsageIn, clean, parse_block, text_block, tool_use_block,
};
use crate::formats::ir::{self, BlockKind, Delta, ErrorKind, Part, StopReason, StreamEvent};
use crate::formats::json::TextLen;
use crate::formats::sse::{SseEvent, write_event};
use crate::formats::tap::Observed;

/// Anthropic's stream counts are cumulative and later events may omit fields: the latest
/// value of each field, from `message_start` and every `message_delta`. Kept the same way by
/// the decoder (translated streams) and [`EventTap`] (relayed ones).
#[derive(Debug, Clone, Copy, Default)]
struct UsageTally(UsageIn);

impl UsageTally {
    fn add(&mut self, later: UsageIn) {
        let s = &mut self.0;
        s.input_tokens = later.input_tokens.or(s.input_tokens);
        s.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(s.cache_creation_input_tokens);
        s.cache_read_input_tokens = later.cache_read_input_tokens.or(s.cache_read_input_tokens);
        s.output_tokens = later.output_tokens.or(s.output_tokens);
    }

    /// The counts, once any was seen.
    fn usage(&self) -> Option<ir::Usage> {
        let s = &self.0;
        let known = s.input_tokens.is_some()
            || s.output_tokens.is_some()
            || s.cache_read_input_tokens.is_some()
            || s.cache_creation_input_tokens.is_some();
        known.then(|| usage_from_wire(s))
    }
}

#[derive(Deserialize)]
struct MessageStartIn {
    message: MessageHeadIn,
}

#[derive(Deserialize)]
struct MessageHeadIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct BlockStartIn<'a> {
    index: usize,
    #[serde(borrow)]
    content_block: &'a RawValue,
}

#[derive(Deserialize)]
struct BlockDeltaIn<'a> {
    index: usize,
    delta: DeltaWire<'a>,
}

#[derive(Deserialize)]
struct IndexIn {
    index: usize,
}

#[derive(Deserialize)]
struct MessageDeltaIn {
    #[serde(default)]
    delta: Option<StopIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct StopIn {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

fn stream_decode_error(e: &serde_json::Error) -> ir::DecodeError {
    ir::DecodeError(format!("invalid Anthropic stream event: {}", clean(e)))
}

#[derive(Deserialize)]
struct TapEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<TapMessage>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    delta: Option<TapDelta>,
}

#[derive(Deserialize)]
struct TapMessage {
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct TapDelta {
    #[serde(default)]
    text: TextLen,
    #[serde(default)]
    partial_json: TextLen,
    #[serde(default)]
    thinking: TextLen,
}

/// What the meter reads from an Anthropic stream relayed as it is: the usage of
/// `message_start` and `message_delta` (kept as the decoder keeps it), the text of deltas,
/// and `message_stop` or `error`, which end the stream. Each event is parsed as JSON; its
/// `type` decides, the `event:` name only when the data has none.
#[derive(Debug, Default)]
pub struct EventTap {
    usage: UsageTally,
}

impl EventTap {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let parsed = serde_json::from_str::<TapEvent<'_>>(&event.data).ok();
        let kind = parsed
            .as_ref()
            .and_then(|e| e.kind.as_deref())
            .or(event.event.as_deref());
        let terminal = matches!(kind, Some("message_stop" | "error"));
        let Some(parsed) = parsed else {
            return Observed {
                terminal,
                ..Observed::default()
            };
        };
        if let Some(u) = parsed.message.and_then(|m| m.usage).or(parsed.usage) {
            self.usage.add(u);
        }
        Observed {
            chars: parsed
                .delta
                .map_or(0, |d| d.text.0 + d.partial_json.0 + d.thinking.0),
            terminal,
            usage_only: false,
        }
    }

    pub fn usage(&self) -> Option<ir::Usage> {
        self.usage.usage()
    }
}

fn parse_event<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ir::DecodeError> {
    serde_json::from_str(data).map_err(|e| stream_decode_error(&e))
}

/// Anthropic SSE stream → canonical stream events. Feed every parsed event in order.
///
/// `message_start` gives `Start` and the prompt-side usage, which is held until
/// `message_delta`; that gives `Finish` and one `Usage` combining both (Anthropic's counts
/// are cumulative). `message_stop` gives `Done`, an `error` event gives `Error`; nothing is
/// produced after either. `ping` and event types added later are ignored.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    usage: UsageTally,
    finished: bool,
    usage_sent: bool,
    done: bool,
    failed: bool,
    /// A `tool_use` that started with its whole input (and index): emitted at its stop
    /// unless `input_json_delta`s bring the input instead.
    pending_input: Option<(usize, String)>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `message_stop` was seen (an `error` event ends the stream without it).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<ir::Usage> {
        self.usage.usage()
    }

    pub fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ir::DecodeError> {
        let mut out = Vec::new();
        let data = event.data.trim();
        if self.done || self.failed || data.is_empty() {
            return Ok(out);
        }
        let tag: TypeTag<'_> = parse_event(data)?;
        match &*tag.kind {
            "message_start" => {
                let start: MessageStartIn = parse_event(data)?;
                self.usage.add(start.message.usage.unwrap_or_default());
                out.push(StreamEvent::Start {
                    id: start.message.id,
                    model: start.message.model,
                });
            }
            "content_block_start" => {
                let start: BlockStartIn<'_> = parse_event(data)?;
                self.block_start(start, &mut out)?;
            }
            "content_block_delta" => {
                let BlockDeltaIn { index, delta } = parse_event(data)?;
                let delta = match delta {
                    DeltaWire::TextDelta { text } => Delta::Text(text.into_owned()),
                    DeltaWire::ThinkingDelta { thinking } => Delta::Thinking(thinking.into_owned()),
                    DeltaWire::SignatureDelta { signature } => Delta::Signature(signature.into_owned()),
                    DeltaWire::InputJsonDelta { partial_json } => {
                        // An empty fragment carries nothing; the input given at the start stays.
                        if partial_json.is_empty() {
                            return Ok(out);
                        }
                        if self.pending_input.as_ref().is_some_and(|(i, _)| *i == index) {
                            self.pending_input = None;
                        }
                        Delta::ToolArguments(partial_json.into_owned())
                    }
                    DeltaWire::Unknown => return Ok(out),
                };
                out.push(StreamEvent::Delta { index, delta });
            }
            "content_block_stop" => {
                let IndexIn { index } = parse_event(data)?;
                if let Some((_, input)) = self.pending_input.take_if(|(i, _)| *i == index) {
                    out.push(StreamEvent::Delta {
                        index,
                        delta: Delta::ToolArguments(input),
                    });
                }
                out.push(StreamEvent::BlockStop { index });
            }
            "message_delta" => {
                let delta: MessageDeltaIn = parse_event(data)?;
                if let Some(StopIn {
                    stop_reason: Some(reason),
                    stop_sequence,
                }) = delta.delta
                    && !self.finished
                {
                    self.finished = true;
                    out.push(StreamEvent::Finish {
                        stop: stop_from_wire(Some(&reason), stop_sequence),
                    });
                }
                self.usage.add(delta.usage.unwrap_or_default());
                self.usage_sent = true;
                out.push(StreamEvent::Usage(self.usage.usage().unwrap_or_default()));
            }
            "message_stop" => {
                if !self.finished {
                    self.finished = true;
                    out.push(StreamEvent::Finish {
                        stop: StopReason::EndTurn,
                    });
                }
                if !self.usage_sent
                    && let Some(usage) = self.usage.usage()
                {
                    self.usage_sent = true;
                    out.push(StreamEvent::Usage(usage));
                }
                self.done = true;
                out.push(StreamEvent::Done);
            }
            "error" => {
                let env: ErrorEnvelope = parse_event(data)?;
                self.failed = true;
                let kind = env
                    .error
                    .kind
                    .as_deref()
                    .and_then(kind_from_type)
                    .unwrap_or(ErrorKind::Server);
                out.push(StreamEvent::Error(ir::ErrorInfo {
                    status: default_status(kind),
                    kind,
                    message: env
                        .error
                        .message
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| "provider reported an error in the stream".to_owned()),
                }));
            }
            _ => {}
        }
        Ok(out)
    }

    fn block_start(
        &mut self,
        start: BlockStartIn<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ir::DecodeError> {
        let index = start.index;
        let part = parse_block(start.content_block)
            .map_err(|e| ir::DecodeError(format!("content_block_start: {e}")))?;
        let mut deltas = Vec::new();
        let kind = match part {
            Part::Text { text, .. } => {
                if !text.is_empty() {
                    deltas.push(Delta::Text(text));
                }
                BlockKind::Text
            }
            Part::Thinking { text, signature } => {
                if !text.is_empty() {
                    deltas.push(Delta::Thinking(text));
                }
                if let Some(signature) = signature {
                    deltas.push(Delta::Signature(signature));
                }
                BlockKind::Thinking
            }
            Part::RedactedThinking { data } => BlockKind::RedactedThinking { data },
            Part::ToolCall { id, name, arguments } => {
                // Sent at the block's end unless deltas bring the input (an empty object too:
                // a call without arguments still has JSON arguments).
                self.pending_input = Some((index, arguments));
                BlockKind::ToolCall { id, name }
            }
            Part::Image { .. } | Part::ToolResult { .. } => {
                return Err(ir::DecodeError(
                    "content_block_start: an answer cannot hold image or tool_result blocks".to_owned(),
                ));
            }
        };
        out.push(StreamEvent::BlockStart { index, kind });
        out.extend(
            deltas
                .into_iter()
                .map(|delta| StreamEvent::Delta { index, delta }),
        );
        Ok(())
    }
}

/// The block being written: its index in the canonical stream and on the wire.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    source: usize,
    index: usize,
}

/// Canonical stream events → Anthropic SSE.
///
/// Writes `message_start` (synthesized before the first block if `Start` never came; its
/// usage is what is known then, zeros otherwise), content blocks numbered from 0 (an open
/// block is stopped before the next starts), then `message_delta` with the stop reason and
/// the usage, and `message_stop`. `Finish` is held until `Usage` or `Done` arrives (OpenAI
/// reports usage after the finish reason), so the single `message_delta` carries both.
/// `Error` writes an `error` event; nothing is written after it or after `message_stop`.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    started: bool,
    closed: bool,
    open: Option<OpenBlock>,
    next_index: usize,
    stop: Option<StopReason>,
    usage: Option<ir::Usage>,
}

impl StreamEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => self.start(id, model, out),
            StreamEvent::BlockStart { index, kind } => self.open_block(*index, kind, out),
            StreamEvent::Delta { index, delta } => self.delta(*index, delta, out),
            StreamEvent::BlockStop { index } => {
                if self.open.is_some_and(|b| b.source == *index) {
                    self.close_block(out);
                }
            }
            StreamEvent::Finish { stop } => {
                self.start("", "", out);
                self.close_block(out);
                self.stop = Some(stop.clone());
                if self.usage.is_some() {
                    self.finish(out);
                }
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(*usage);
                if self.stop.is_some() {
                    self.finish(out);
                }
            }
            StreamEvent::Error(err) => {
                error_event(err, out);
                self.closed = true;
            }
            StreamEvent::Done => {
                self.start("", "", out);
                self.close_block(out);
                self.finish(out);
            }
        }
    }

    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = usage_to_wire(&self.usage.unwrap_or_default());
        emit(
            out,
            &StreamOut::MessageStart {
                message: MessageBody {
                    id,
                    kind: "message",
                    role: "assistant",
                    model,
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage,
                },
            },
        );
    }

    fn open_block(&mut self, source: usize, kind: &BlockKind, out: &mut BytesMut) {
        self.start("", "", out);
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        let content_block = match kind {
            BlockKind::Text => text_block("", None),
            BlockKind::Thinking => Block::Thinking(ThinkingBlock {
                thinking: Cow::Borrowed(""),
                signature: None,
            }),
            BlockKind::RedactedThinking { data } => Block::RedactedThinking(RedactedThinkingBlock {
                data: Cow::Borrowed(data),
            }),
            BlockKind::ToolCall { id, name } => tool_use_block(id, name, ToolInput::Empty),
        };
        emit(out, &StreamOut::ContentBlockStart { index, content_block });
        self.open = Some(OpenBlock { source, index });
    }

    fn delta(&mut self, source: usize, delta: &Delta, out: &mut BytesMut) {
        let index = match self.open {
            Some(b) if b.source == source => b.index,
            // A delta without its block start: text and thinking can start one.
            _ => {
                let kind = match delta {
                    Delta::Text(_) => BlockKind::Text,
                    Delta::Thinking(_) => BlockKind::Thinking,
                    Delta::Signature(_) | Delta::ToolArguments(_) => return,
                };
                self.open_block(source, &kind, out);
                self.next_index - 1
            }
        };
        let delta = match delta {
            Delta::Text(text) => DeltaWire::TextDelta {
                text: Cow::Borrowed(text),
            },
            Delta::Thinking(thinking) => DeltaWire::ThinkingDelta {
                thinking: Cow::Borrowed(thinking),
            },
            Delta::Signature(signature) => DeltaWire::SignatureDelta {
                signature: Cow::Borrowed(signature),
            },
            Delta::ToolArguments(partial_json) => DeltaWire::InputJsonDelta {
                partial_json: Cow::Borrowed(partial_json),
            },
        };
        emit(out, &StreamOut::ContentBlockDelta { index, delta });
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.open.take() {
            emit(out, &StreamOut::ContentBlockStop { index: block.index });
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        let end_turn = StopReason::EndTurn;
        let (stop_reason, stop_sequence) = stop_to_wire(self.stop.as_ref().unwrap_or(&end_turn));
        emit(
            out,
            &StreamOut::MessageDelta {
                delta: StopOut {
                    stop_reason,
                    stop_sequence,
                },
                usage: usage_to_wire(&self.usage.unwrap_or_default()),
            },
        );
        emit(out, &StreamOut::MessageStop);
        self.closed = true;
    }
}

/// The `error` event that ends an Anthropic stream: the one way it is written.
pub fn error_event(err: &ir::ErrorInfo, out: &mut BytesMut) {
    let (_, kind) = error_wire(err);
    emit(
        out,
        &StreamOut::Error {
            error: ErrorOut {
                kind,
                message: &err.message,
            },
        },
    );
}

fn emit(out: &mut BytesMut, event: &StreamOut<'_>) {
    // Cannot fail (see `to_bytes`).
    if let Ok(data) = serde_json::to_string(event) {
        write_event(out, Some(event.name()), &data);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::formats::sse::parse_events;
    use crate::formats::test_support::{data_event, decode_pieces};

    /// A recorded-shape Anthropic stream: thinking with a signature, text, then two tool calls
    /// whose input arrives split over several deltas; a ping in between.
    const STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01Wx9","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":1024,"output_tokens":3,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants the weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":" in two cities: call the tool twice."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+v2/Xm=="}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me check "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"both cities.\n"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"Par"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"is, FR\", \"unit\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":": \"celsius\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: content_block_start
data: {"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"toolu_01CH5yJ8yWFUs3zQf4U1Bz7o","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"locat"}}

event: content_block_delta
data: {"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"ion\": \"Berlin, DE\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":3}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":189}}

event: message_stop
data: {"type":"message_stop"}

"#;

    fn stream_events() -> Vec<StreamEvent> {
        let delta = |index, delta| StreamEvent::Delta { index, delta };
        let args = |index, s: &str| StreamEvent::Delta {
            index,
            delta: Delta::ToolArguments(s.into()),
        };
        vec![
            StreamEvent::Start {
                id: "msg_01Wx9".into(),
                model: "claude-sonnet-4-5-20250929".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            delta(0, Delta::Thinking("The user wants the weather".into())),
            delta(0, Delta::Thinking(" in two cities: call the tool twice.".into())),
            delta(
                0,
                Delta::Signature("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds+v2/Xm==".into()),
            ),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::Text,
            },
            delta(1, Delta::Text("Let me check ".into())),
            delta(1, Delta::Text("both cities.\n".into())),
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::ToolCall {
                    id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                    name: "get_weather".into(),
                },
            },
            args(2, r#"{"location": "Par"#),
            args(2, r#"is, FR", "unit""#),
            args(2, r#": "celsius"}"#),
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::BlockStart {
                index: 3,
                kind: BlockKind::ToolCall {
                    id: "toolu_01CH5yJ8yWFUs3zQf4U1Bz7o".into(),
                    name: "get_weather".into(),
                },
            },
            args(3, r#"{"locat"#),
            args(3, r#"ion": "Berlin, DE"}"#),
            StreamEvent::BlockStop { index: 3 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(ir::Usage {
                input_tokens: 1496,
                output_tokens: 189,
                cached_input_tokens: 1024,
                cache_creation_tokens: 0,
                reasoning_tokens: 0,
            }),
            StreamEvent::Done,
        ]
    }

    /// Frames, parses and decodes a stream fed in the given chunks.
    fn decode_chunks(chunks: &[&[u8]]) -> (Vec<StreamEvent>, bool) {
        let mut decoder = StreamDecoder::new();
        let (got, _) = decode_pieces(&mut decoder, chunks);
        (got, decoder.is_done())
    }

    #[test]
    fn decodes_a_recorded_stream() {
        let (got, done) = decode_chunks(&[STREAM.as_bytes()]);
        assert_eq!(got, stream_events());
        assert!(done);

        // The argument fragments add up to each call's input.
        let args: String = got
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Delta {
                    index: 3,
                    delta: Delta::ToolArguments(s),
                } => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "Berlin, DE"})
        );
    }

    #[test]
    fn decodes_the_same_stream_however_the_bytes_are_split() {
        let want = stream_events();
        for stream in [STREAM.to_owned(), STREAM.replace('\n', "\r\n")] {
            let bytes = stream.as_bytes();
            for i in 0..=bytes.len() {
                assert_eq!(
                    decode_chunks(&[&bytes[..i], &bytes[i..]]),
                    (want.clone(), true),
                    "split at {i}"
                );
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(decode_chunks(&singles), (want.clone(), true));
            let sevens: Vec<&[u8]> = bytes.chunks(7).collect();
            assert_eq!(decode_chunks(&sevens), (want.clone(), true));
        }
    }

    fn decode_all(stream: &str) -> (Vec<StreamEvent>, bool) {
        decode_chunks(&[stream.as_bytes()])
    }

    #[test]
    fn stream_errors_end_the_stream() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",",
            "\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (got, done) = decode_all(stream);
        assert_eq!(
            got,
            [
                StreamEvent::Start {
                    id: "m".into(),
                    model: "c".into()
                },
                StreamEvent::Error(ir::ErrorInfo {
                    status: 529,
                    kind: ErrorKind::Overloaded,
                    message: "Overloaded".into()
                }),
            ]
        );
        assert!(!done, "an error is no normal end");
    }

    #[test]
    fn decoder_edge_cases() {
        // Whole input at the start and no deltas; unknown events and deltas are skipped;
        // a stream without message_delta still finishes with the usage it had.
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",",
            "\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,",
            "\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{\"b\":1,\"a\":[2]}}}\n\n",
            "event: brand_new_event\ndata: {\"type\":\"brand_new_event\",\"x\":1}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,",
            "\"content_block\":{\"type\":\"text\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,",
            "\"delta\":{\"type\":\"citations_delta\",\"citation\":{}}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,",
            "\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"opaque\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (got, done) = decode_all(stream);
        assert!(done);
        assert_eq!(
            got,
            [
                StreamEvent::Start {
                    id: "m".into(),
                    model: "c".into()
                },
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::ToolCall {
                        id: "t".into(),
                        name: "f".into()
                    }
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::ToolArguments(r#"{"b":1,"a":[2]}"#.into())
                },
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::BlockStart {
                    index: 1,
                    kind: BlockKind::Text
                },
                StreamEvent::Delta {
                    index: 1,
                    delta: Delta::Text("Hi".into())
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::BlockStart {
                    index: 2,
                    kind: BlockKind::RedactedThinking {
                        data: "opaque".into()
                    }
                },
                StreamEvent::BlockStop { index: 2 },
                StreamEvent::Finish {
                    stop: StopReason::EndTurn
                },
                StreamEvent::Usage(ir::Usage {
                    input_tokens: 7,
                    output_tokens: 1,
                    cache_creation_tokens: 2,
                    ..Default::default()
                }),
                StreamEvent::Done,
            ]
        );

        // Usage reported cumulatively in message_delta wins over message_start's.
        let mut decoder = StreamDecoder::new();
        decoder
            .decode(&data_event(
                r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            ))
            .unwrap();
        let got = decoder
            .decode(&data_event(
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"input_tokens":9,"cache_read_input_tokens":4,"output_tokens":50}}"#,
            ))
            .unwrap();
        assert_eq!(
            got,
            [
                StreamEvent::Finish {
                    stop: StopReason::MaxTokens
                },
                StreamEvent::Usage(ir::Usage {
                    input_tokens: 13,
                    output_tokens: 50,
                    cached_input_tokens: 4,
                    ..Default::default()
                })
            ]
        );

        // Broken or untranslatable events are errors, not silence.
        for data in [
            "{not json",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
        ] {
            let err = StreamDecoder::new().decode(&data_event(data)).unwrap_err();
            assert!(
                err.0.starts_with("invalid Anthropic stream event") || err.0.contains("server_tool_use"),
                "{err}"
            );
        }
        // A ping with no data, or with data, is nothing.
        let ping = SseEvent {
            event: Some("ping".into()),
            data: String::new(),
        };
        assert!(StreamDecoder::new().decode(&ping).unwrap().is_empty());
        assert!(
            StreamDecoder::new()
                .decode(&data_event(r#"{"type": "ping"}"#))
                .unwrap()
                .is_empty()
        );
    }

    fn encode_stream(events: &[StreamEvent]) -> BytesMut {
        let mut encoder = StreamEncoder::new();
        let mut out = BytesMut::new();
        for event in events {
            encoder.encode(event, &mut out);
        }
        out
    }

    /// Event names and data of an encoded stream, checking each name matches its `type`.
    fn written(out: &[u8]) -> Vec<(String, Value)> {
        parse_events(out)
            .into_iter()
            .map(|e| {
                let data: Value = serde_json::from_str(&e.data).unwrap();
                let name = e.event.unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn names(out: &[u8]) -> Vec<String> {
        written(out).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn encoded_stream_decodes_to_the_same_events() {
        let events = stream_events();
        let out = encode_stream(&events);
        let mut decoder = StreamDecoder::new();
        let got: Vec<StreamEvent> = parse_events(&out)
            .iter()
            .flat_map(|e| decoder.decode(e).unwrap())
            .collect();
        assert_eq!(got, events);
        assert!(decoder.is_done());

        let written = written(&out);
        let start = &written[0].1["message"];
        assert_eq!(start["id"], "msg_01Wx9");
        assert_eq!(start["content"], json!([]));
        assert_eq!(
            start["usage"],
            json!({"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0})
        );
        assert_eq!(
            written[1].1["content_block"],
            json!({"type": "thinking", "thinking": ""})
        );
        let (name, delta) = &written[written.len() - 2];
        assert_eq!(name, "message_delta");
        assert_eq!(
            delta,
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 1024, "output_tokens": 189}})
        );
    }

    #[test]
    fn encoder_waits_for_usage_that_follows_the_finish() {
        let usage = ir::Usage {
            input_tokens: 30,
            output_tokens: 7,
            cached_input_tokens: 10,
            ..Default::default()
        };
        let mut encoder = StreamEncoder::new();
        let mut out = BytesMut::new();
        for event in [
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("Hello".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Finish {
                stop: StopReason::EndTurn,
            },
        ] {
            encoder.encode(&event, &mut out);
        }
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop"
            ],
            "the finish waits for usage"
        );
        encoder.encode(&StreamEvent::Usage(usage), &mut out);
        encoder.encode(&StreamEvent::Done, &mut out);
        let first = written(&out);
        let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[4..], ["message_delta", "message_stop"]);
        assert_eq!(
            first[4].1["usage"],
            json!({"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10, "output_tokens": 7})
        );
        assert_eq!(first[4].1["delta"]["stop_reason"], "end_turn");

        // Usage first: the finish goes out at once. No usage at all: at Done, with zeros.
        let before = encode_stream(&[
            StreamEvent::Start {
                id: "a".into(),
                model: "b".into(),
            },
            StreamEvent::Usage(usage),
            StreamEvent::Finish {
                stop: StopReason::MaxTokens,
            },
        ]);
        let w = written(&before);
        assert_eq!(w[1].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(w[1].1["usage"]["output_tokens"], 7);
        assert_eq!(w[2].0, "message_stop");

        let none = encode_stream(&[
            StreamEvent::Start {
                id: "a".into(),
                model: "b".into(),
            },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Done,
            StreamEvent::Done,
        ]);
        let w = written(&none);
        assert_eq!(
            w.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["message_start", "message_delta", "message_stop"]
        );
        assert_eq!(w[1].1["usage"]["output_tokens"], 0);
    }

    #[test]
    fn encoder_repairs_loose_event_orders() {
        // No Start; a delta without its block; a block started while another is open; an
        // argument delta for a block that never started; a stop for another block.
        let out = encode_stream(&[
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("Hi".into()),
            },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                },
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("{\"a\":".into()),
            },
            StreamEvent::Delta {
                index: 7,
                delta: Delta::ToolArguments("junk".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("1}".into()),
            },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Done,
        ]);
        let w = written(&out);
        let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(w[1].1["content_block"], json!({"type": "text", "text": ""}));
        assert_eq!(
            w[4].1["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}})
        );
        assert_eq!(w[4].1["index"], 1);
        assert_eq!(
            w[6].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "1}"})
        );

        // An error is written as Anthropic's error event, and ends the stream.
        let out = encode_stream(&[
            StreamEvent::Start {
                id: "a".into(),
                model: "b".into(),
            },
            StreamEvent::Error(ir::ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "upstream overloaded".into(),
            }),
            StreamEvent::Done,
        ]);
        let w = written(&out);
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[1],
            (
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "upstream overloaded"}})
            )
        );
        let mut decoder = StreamDecoder::new();
        let decoded: Vec<StreamEvent> = parse_events(&out)
            .iter()
            .flat_map(|e| decoder.decode(e).unwrap())
            .collect();
        assert_eq!(
            decoded[1],
            StreamEvent::Error(ir::ErrorInfo {
                status: 529,
                kind: ErrorKind::Overloaded,
                message: "upstream overloaded".into()
            })
        );
    }
}
