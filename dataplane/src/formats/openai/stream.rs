//! `chat.completion.chunk` streams: decoded into canonical stream events, and encoded out of them.

use std::collections::VecDeque;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{error_fields, error_info, openai_type_code};
use super::response::{stop_from_wire, stop_to_wire, unix_now};
use super::usage::WireUsage;
use super::{InFunction, InToolCall, OutThinkingBlock, OutUsage, WireThinkingBlock};
use crate::formats::ir::{self, BlockKind, Delta, StopReason, StreamEvent, Usage};
use crate::formats::sse::{SseEvent, write_event};

#[derive(Deserialize)]
struct InChunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<InChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct InChunkChoice {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    delta: Option<InDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct InDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    thinking_blocks: Option<Vec<WireThinkingBlock>>,
    #[serde(default)]
    tool_calls: Option<Vec<InToolCall>>,
}

/// Tells when streamed JSON arguments form one complete value (an object or array),
/// byte by byte, without parsing them again.
#[derive(Debug, Default)]
struct JsonEnd {
    depth: u32,
    in_string: bool,
    escaped: bool,
    closed: bool,
}

impl JsonEnd {
    fn feed(&mut self, text: &str) {
        for b in text.bytes() {
            if self.closed {
                return;
            }
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.closed = self.depth == 0;
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug)]
enum Pending {
    Text,
    Thinking {
        signed: bool,
    },
    Redacted {
        data: String,
    },
    Tool {
        slot: u32,
        id: String,
        name: String,
        args: JsonEnd,
    },
}

/// A block not yet stopped. Only the first of the queue may be started (streaming live);
/// the others hold their deltas until it is their turn.
#[derive(Debug)]
struct OpenBlock {
    kind: Pending,
    started: bool,
    deltas: Vec<Delta>,
}

impl OpenBlock {
    fn new(kind: Pending) -> Self {
        OpenBlock {
            kind,
            started: false,
            deltas: Vec::new(),
        }
    }

    /// Whether its `BlockStart` can be emitted: a tool call needs its name first.
    fn ready(&self) -> bool {
        match &self.kind {
            Pending::Tool { name, .. } => !name.is_empty(),
            _ => true,
        }
    }

    /// Whether nothing more can arrive for it, given that a later block exists. Text and
    /// thinking only ever grow at the end of the queue; a tool call may receive fragments
    /// until its arguments close.
    fn complete(&self) -> bool {
        match &self.kind {
            Pending::Tool { args, .. } => args.closed,
            _ => true,
        }
    }

    fn block_kind(&self) -> BlockKind {
        match &self.kind {
            Pending::Text => BlockKind::Text,
            Pending::Thinking { .. } => BlockKind::Thinking,
            Pending::Redacted { data } => BlockKind::RedactedThinking { data: data.clone() },
            Pending::Tool { slot, id, name, .. } => BlockKind::ToolCall {
                id: if id.is_empty() {
                    format!("call_{slot}")
                } else {
                    id.clone()
                },
                name: name.clone(),
            },
        }
    }
}

/// OpenAI `chat.completion.chunk` SSE events → IR stream events.
///
/// The first chunk with choices or usage gives `Start`; `delta.content` (and `refusal`)
/// feed text blocks, `delta.reasoning_content` (or `reasoning`) and `thinking_blocks`
/// thinking blocks (signatures included), `delta.tool_calls[i]` tool-call blocks. Blocks
/// never interleave: the oldest unfinished block streams live and the others wait; a
/// tool call is known to be finished once its JSON arguments close, or at the end.
/// `finish_reason` stops what is open and gives `Finish`; the usage chunk gives `Usage`;
/// `data: [DONE]` gives `Done` (and [`Self::is_done`]). A chunk carrying `error` gives
/// `StreamEvent::Error`, after which nothing more is produced. Only choice 0 is translated.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    finished: bool,
    done: bool,
    failed: bool,
    queue: VecDeque<OpenBlock>,
    /// IR index of the next block to start.
    next_index: usize,
    /// IR index of the started head of `queue`.
    head_index: usize,
    /// Provider `index` of a tool call → our slot for it (the latest call with that index).
    wire_slots: Vec<(u32, u32)>,
    next_slot: u32,
    /// Slots (with their call ids) whose block is stopped; later fragments are ignored.
    closed: Vec<(u32, String)>,
    saw_tool: bool,
    usage: Option<Usage>,
    usage_sent: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ir::DecodeError> {
        let mut out = Vec::new();
        if self.done || self.failed {
            return Ok(out);
        }
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(out);
        }
        if data == "[DONE]" {
            self.end(&mut out);
            return Ok(out);
        }
        let chunk: InChunk = serde_json::from_str(data)
            .map_err(|e| ir::DecodeError(format!("provider sent an invalid chat.completion.chunk: {e}")))?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let (message, kind, code) = error_fields(&error);
            self.failed = true;
            out.push(StreamEvent::Error(error_info(
                kind.as_deref(),
                code.as_deref(),
                message,
                "the provider reported an error in the stream",
            )));
            return Ok(out);
        }
        let choices = chunk.choices.unwrap_or_default();
        if !self.started && (!choices.is_empty() || chunk.usage.is_some()) {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.id.unwrap_or_default(),
                model: chunk.model.unwrap_or_default(),
            });
        }
        let usage_only = choices.is_empty();
        let mut finished_now = false;
        for choice in choices {
            if choice.index.unwrap_or(0) != 0 || self.finished {
                continue;
            }
            if let Some(delta) = choice.delta {
                self.apply_delta(delta, &mut out);
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.advance(true, &mut out);
                out.push(StreamEvent::Finish {
                    stop: stop_from_wire(&reason),
                });
                self.finished = true;
                finished_now = true;
            }
        }
        if let Some(usage) = chunk.usage {
            let usage = usage.to_ir();
            self.usage = Some(usage);
            if self.finished && !self.usage_sent && (usage_only || finished_now) {
                out.push(StreamEvent::Usage(usage));
                self.usage_sent = true;
            }
        }
        Ok(out)
    }

    /// `[DONE]`: closes whatever is open (with a `Finish` if the provider sent none), then
    /// pending usage, then `Done`.
    fn end(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.finished && self.started {
            self.advance(true, out);
            out.push(StreamEvent::Finish {
                stop: if self.saw_tool {
                    StopReason::ToolUse
                } else {
                    StopReason::EndTurn
                },
            });
            self.finished = true;
        }
        if let Some(usage) = self.usage.filter(|_| !self.usage_sent) {
            out.push(StreamEvent::Usage(usage));
            self.usage_sent = true;
        }
        self.done = true;
        out.push(StreamEvent::Done);
    }

    fn apply_delta(&mut self, delta: InDelta, out: &mut Vec<StreamEvent>) {
        let reasoning = delta
            .reasoning_content
            .or(delta.reasoning)
            .filter(|t| !t.is_empty());
        let had_reasoning = reasoning.is_some();
        if let Some(text) = reasoning {
            self.push_thinking(text);
        }
        for block in delta.thinking_blocks.unwrap_or_default() {
            match block.kind.as_str() {
                "thinking" => {
                    // With `reasoning_content` beside it, the block repeats the same text.
                    if !had_reasoning && let Some(text) = block.thinking.filter(|t| !t.is_empty()) {
                        self.push_thinking(text);
                    }
                    if let Some(signature) = block.signature.filter(|s| !s.is_empty()) {
                        self.push_signature(signature);
                    }
                }
                "redacted_thinking" => self.queue.push_back(OpenBlock::new(Pending::Redacted {
                    data: block.data.unwrap_or_default(),
                })),
                _ => {}
            }
        }
        for text in [delta.content, delta.refusal].into_iter().flatten() {
            if !text.is_empty() {
                self.push_text(text);
            }
        }
        for call in delta.tool_calls.unwrap_or_default() {
            self.push_tool(call);
        }
        self.advance(false, out);
    }

    /// Text and thinking always extend the last block of the queue, or start a new one.
    fn push_text(&mut self, text: String) {
        if !matches!(
            self.queue.back(),
            Some(OpenBlock {
                kind: Pending::Text,
                ..
            })
        ) {
            self.queue.push_back(OpenBlock::new(Pending::Text));
        }
        self.push_back_delta(Delta::Text(text));
    }

    fn push_thinking(&mut self, text: String) {
        if !matches!(
            self.queue.back(),
            Some(OpenBlock {
                kind: Pending::Thinking { signed: false },
                ..
            })
        ) {
            self.queue
                .push_back(OpenBlock::new(Pending::Thinking { signed: false }));
        }
        self.push_back_delta(Delta::Thinking(text));
    }

    fn push_signature(&mut self, signature: String) {
        match self.queue.back_mut() {
            Some(OpenBlock {
                kind: Pending::Thinking { signed },
                ..
            }) if !*signed => *signed = true,
            _ => self
                .queue
                .push_back(OpenBlock::new(Pending::Thinking { signed: true })),
        }
        self.push_back_delta(Delta::Signature(signature));
    }

    /// Queues a delta on the last block; [`Self::advance`] emits it when that block is the head.
    fn push_back_delta(&mut self, delta: Delta) {
        if let Some(block) = self.queue.back_mut() {
            block.deltas.push(delta);
        }
    }

    fn push_tool(&mut self, call: InToolCall) {
        self.saw_tool = true;
        let function = call.function.unwrap_or(InFunction {
            name: None,
            arguments: None,
        });
        let id = call.id.filter(|s| !s.is_empty());
        let name = function.name.filter(|s| !s.is_empty());
        let arguments = match function.arguments {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => String::new(),
            Some(other) => other.to_string(),
        };
        let slot = self.slot_for(call.index, id.as_deref());
        if self.closed.iter().any(|(s, _)| *s == slot) {
            // Its arguments already closed: only whitespace can validly follow.
            return;
        }
        let pos = self
            .queue
            .iter()
            .position(|b| matches!(&b.kind, Pending::Tool { slot: s, .. } if *s == slot));
        let pos = match pos {
            Some(pos) => pos,
            None => {
                self.queue.push_back(OpenBlock::new(Pending::Tool {
                    slot,
                    id: String::new(),
                    name: String::new(),
                    args: JsonEnd::default(),
                }));
                self.queue.len() - 1
            }
        };
        let Some(block) = self.queue.get_mut(pos) else {
            return;
        };
        if let Pending::Tool {
            id: bid,
            name: bname,
            args,
            ..
        } = &mut block.kind
        {
            if !block.started {
                if bid.is_empty()
                    && let Some(id) = id
                {
                    *bid = id;
                }
                if bname.is_empty()
                    && let Some(name) = name
                {
                    *bname = name;
                }
            }
            if !arguments.is_empty() {
                args.feed(&arguments);
                block.deltas.push(Delta::ToolArguments(arguments));
            }
        }
    }

    /// The id known so far for the call in `slot`, open or closed.
    fn slot_id(&self, slot: u32) -> Option<&str> {
        let open = self.queue.iter().find_map(|b| match &b.kind {
            Pending::Tool { slot: s, id, .. } if *s == slot => Some(id.as_str()),
            _ => None,
        });
        open.or_else(|| {
            self.closed
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|(_, id)| id.as_str())
        })
    }

    /// The call a fragment belongs to. Fragments are matched by `index`, but a fragment
    /// bringing a new id under a known index starts a new call (some providers number every
    /// call 0); without `index`, a fragment goes to the call with its id, or the latest call.
    fn slot_for(&mut self, wire: Option<u32>, id: Option<&str>) -> u32 {
        let mapped = match wire {
            Some(w) => self
                .wire_slots
                .iter()
                .find(|(x, _)| *x == w)
                .map(|(_, slot)| *slot),
            None => match id {
                Some(id) => (0..self.next_slot).find(|&slot| self.slot_id(slot) == Some(id)),
                None => self.next_slot.checked_sub(1),
            },
        };
        if let Some(slot) = mapped {
            let renamed =
                matches!((id, self.slot_id(slot)), (Some(new), Some(old)) if !old.is_empty() && new != old);
            if !renamed {
                return slot;
            }
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        if let Some(w) = wire {
            self.wire_slots.retain(|(x, _)| *x != w);
            self.wire_slots.push((w, slot));
        }
        slot
    }

    /// Emits what the queue allows: starts the head when ready, flushes its buffered
    /// deltas, and stops it once it is complete and a later block waits. With `force`,
    /// everything is started and stopped in order (the answer is over).
    fn advance(&mut self, force: bool, out: &mut Vec<StreamEvent>) {
        loop {
            let waiting = self.queue.len() > 1;
            let Some(head) = self.queue.front_mut() else {
                return;
            };
            if !head.started {
                if !force && !head.ready() {
                    return;
                }
                self.head_index = self.next_index;
                self.next_index += 1;
                head.started = true;
                out.push(StreamEvent::BlockStart {
                    index: self.head_index,
                    kind: head.block_kind(),
                });
            }
            for delta in head.deltas.drain(..) {
                out.push(StreamEvent::Delta {
                    index: self.head_index,
                    delta,
                });
            }
            if !(force || (waiting && head.complete())) {
                return;
            }
            out.push(StreamEvent::BlockStop {
                index: self.head_index,
            });
            if let Some(OpenBlock {
                kind: Pending::Tool { slot, id, .. },
                ..
            }) = self.queue.pop_front()
            {
                self.closed.push((slot, id));
            }
        }
    }
}

#[derive(Serialize)]
struct OutChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<OutChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OutUsage>,
}

#[derive(Serialize)]
struct OutChunkChoice<'a> {
    index: u32,
    delta: OutDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct OutDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<OutThinkingBlock<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutChunkToolCall<'a>>,
}

#[derive(Serialize)]
struct OutChunkToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: OutChunkFunction<'a>,
}

#[derive(Serialize)]
struct OutChunkFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// IR stream events → OpenAI `chat.completion.chunk` SSE, ending with `data: [DONE]`.
///
/// `Start` sends the `role: "assistant"` chunk; each delta is one chunk (text as
/// `content`, thinking as `reasoning_content`, signatures and redacted blocks as
/// `thinking_blocks`, tool calls as `tool_calls[k]` where `k` counts tool-call blocks);
/// `Finish` sends `finish_reason`; `Usage` sends the usage chunk (`choices: []`) only when
/// the caller asked for it, after the finish chunk; `Error` sends `data: {"error":{…}}` and
/// no `[DONE]`. Every chunk carries the same `id`, `created` and `model`.
#[derive(Debug)]
pub struct StreamEncoder {
    include_usage: bool,
    id: String,
    model: String,
    created: i64,
    /// IR block index → tool-call ordinal.
    tools: Vec<(usize, usize)>,
    finished: bool,
    pending_usage: Option<Usage>,
    closed: bool,
}

impl StreamEncoder {
    pub fn new(include_usage: bool) -> Self {
        StreamEncoder {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            tools: Vec::new(),
            finished: false,
            pending_usage: None,
            closed: false,
        }
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.delta_chunk(
                    OutDelta {
                        role: Some("assistant"),
                        content: Some(""),
                        ..OutDelta::default()
                    },
                    out,
                );
            }
            StreamEvent::BlockStart { index, kind } => match kind {
                BlockKind::ToolCall { id, name } => {
                    let k = self.tools.len();
                    self.tools.push((*index, k));
                    self.delta_chunk(
                        OutDelta {
                            tool_calls: vec![OutChunkToolCall {
                                index: k,
                                id: Some(id),
                                kind: Some("function"),
                                function: OutChunkFunction {
                                    name: Some(name),
                                    arguments: "",
                                },
                            }],
                            ..OutDelta::default()
                        },
                        out,
                    );
                }
                BlockKind::RedactedThinking { data } => self.delta_chunk(
                    OutDelta {
                        thinking_blocks: vec![OutThinkingBlock::RedactedThinking { data }],
                        ..OutDelta::default()
                    },
                    out,
                ),
                BlockKind::Text | BlockKind::Thinking => {}
            },
            StreamEvent::Delta { index, delta } => {
                let delta = match delta {
                    Delta::Text(text) => OutDelta {
                        content: Some(text),
                        ..OutDelta::default()
                    },
                    Delta::Thinking(text) => OutDelta {
                        reasoning_content: Some(text),
                        ..OutDelta::default()
                    },
                    Delta::Signature(signature) => OutDelta {
                        thinking_blocks: vec![OutThinkingBlock::Thinking {
                            thinking: "",
                            signature: Some(signature),
                        }],
                        ..OutDelta::default()
                    },
                    Delta::ToolArguments(arguments) => {
                        let Some(&(_, k)) = self.tools.iter().find(|(i, _)| i == index) else {
                            return;
                        };
                        OutDelta {
                            tool_calls: vec![OutChunkToolCall {
                                index: k,
                                id: None,
                                kind: None,
                                function: OutChunkFunction {
                                    name: None,
                                    arguments,
                                },
                            }],
                            ..OutDelta::default()
                        }
                    }
                };
                self.delta_chunk(delta, out);
            }
            StreamEvent::BlockStop { .. } => {}
            StreamEvent::Finish { stop } => {
                let chunk = OutChunk {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: vec![OutChunkChoice {
                        index: 0,
                        delta: OutDelta::default(),
                        logprobs: None,
                        finish_reason: Some(stop_to_wire(stop).0),
                    }],
                    usage: None,
                };
                write_json(&chunk, out);
                self.finished = true;
                if let Some(usage) = self.pending_usage.take() {
                    self.usage_chunk(&usage, out);
                }
            }
            StreamEvent::Usage(usage) if self.include_usage => {
                if self.finished {
                    self.usage_chunk(usage, out);
                } else {
                    self.pending_usage = Some(*usage);
                }
            }
            StreamEvent::Usage(_) => {}
            StreamEvent::Error(err) => {
                let (kind, code) = openai_type_code(err.kind);
                super::error_event(&err.message, kind, code, out);
                self.closed = true;
            }
            StreamEvent::Done => {
                if let Some(usage) = self.pending_usage.take() {
                    self.usage_chunk(&usage, out);
                }
                write_event(out, None, "[DONE]");
                self.closed = true;
            }
        }
    }

    fn delta_chunk(&self, delta: OutDelta<'_>, out: &mut BytesMut) {
        let chunk = OutChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: vec![OutChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        write_json(&chunk, out);
    }

    fn usage_chunk(&self, usage: &Usage, out: &mut BytesMut) {
        let chunk = OutChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: Vec::new(),
            usage: Some(OutUsage::from(usage)),
        };
        write_json(&chunk, out);
    }
}

/// Writes one `data:` event holding `value` as JSON (which never contains a raw newline).
fn write_json<T: Serialize>(value: &T, out: &mut BytesMut) {
    if let Ok(json) = serde_json::to_vec(value) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\n\n");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::formats::ir::{ErrorInfo, ErrorKind};
    use crate::formats::sse::parse_events;
    use crate::formats::test_support::decode_pieces;

    /// Checks the IR stream grammar: Start, then blocks 0, 1, 2… each opened, fed and
    /// stopped before the next opens, then Finish/Usage, then Done.
    fn assert_well_formed(events: &[StreamEvent]) {
        assert!(
            matches!(events.first(), Some(StreamEvent::Start { .. })),
            "{events:#?}"
        );
        let mut open: Option<usize> = None;
        let mut next = 0;
        let mut finished = false;
        for e in &events[1..] {
            match e {
                StreamEvent::BlockStart { index, .. } => {
                    assert!(open.is_none() && !finished, "interleaved at {e:?}: {events:#?}");
                    assert_eq!(*index, next);
                    open = Some(*index);
                    next += 1;
                }
                StreamEvent::Delta { index, .. } => assert_eq!(open, Some(*index), "{e:?}"),
                StreamEvent::BlockStop { index } => {
                    assert_eq!(open, Some(*index), "{e:?}");
                    open = None;
                }
                StreamEvent::Finish { .. } | StreamEvent::Usage(_) => {
                    assert!(open.is_none(), "{e:?}");
                    finished = true;
                }
                StreamEvent::Done => assert!(finished && open.is_none()),
                StreamEvent::Start { .. } | StreamEvent::Error(_) => panic!("unexpected {e:?}"),
            }
        }
    }

    fn chunk(body: Value) -> String {
        let mut full = json!({"id": "chatcmpl-B9", "object": "chat.completion.chunk", "created": 1_741_000_000,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_1", "usage": null});
        for (k, v) in body.as_object().unwrap() {
            full[k] = v.clone();
        }
        format!("data: {full}\n\n")
    }

    fn delta(d: Value) -> String {
        chunk(json!({"choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": null}]}))
    }

    fn tool_start(index: u32, id: &str, name: &str) -> String {
        delta(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        )
    }

    fn tool_args(index: u32, args: &str) -> String {
        delta(json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]}))
    }

    fn finish(reason: &str) -> String {
        chunk(json!({"choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]}))
    }

    fn usage_chunk() -> String {
        chunk(
            json!({"choices": [], "usage": {"prompt_tokens": 82, "completion_tokens": 41, "total_tokens": 123,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}}),
        )
    }

    /// A stream shaped like OpenAI's: text, then two parallel tool calls whose arguments
    /// come in many fragments, the finish chunk, the include_usage chunk and [DONE].
    fn recorded_stream() -> String {
        [
            delta(json!({"role": "assistant", "content": "", "refusal": null})),
            delta(json!({"content": "Let me"})),
            delta(json!({"content": " check both."})),
            tool_start(0, "call_a", "get_weather"),
            tool_args(0, "{\"ci"),
            tool_args(0, "ty\": \"Pa"),
            tool_args(0, "ris, \\\"FR\\\" {x}"),
            tool_args(0, "\"}"),
            tool_start(1, "call_b", "get_time"),
            tool_args(1, "{\"tz\""),
            tool_args(1, ": \"Europe/"),
            tool_args(1, "Paris\"}"),
            finish("tool_calls"),
            usage_chunk(),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
    }

    fn recorded_events() -> Vec<StreamEvent> {
        let d = |index, delta| StreamEvent::Delta { index, delta };
        vec![
            StreamEvent::Start {
                id: "chatcmpl-B9".into(),
                model: "gpt-4o-2024-08-06".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            d(0, Delta::Text("Let me".into())),
            d(0, Delta::Text(" check both.".into())),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "call_a".into(),
                    name: "get_weather".into(),
                },
            },
            d(1, Delta::ToolArguments("{\"ci".into())),
            d(1, Delta::ToolArguments("ty\": \"Pa".into())),
            d(1, Delta::ToolArguments("ris, \\\"FR\\\" {x}".into())),
            d(1, Delta::ToolArguments("\"}".into())),
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::ToolCall {
                    id: "call_b".into(),
                    name: "get_time".into(),
                },
            },
            d(2, Delta::ToolArguments("{\"tz\"".into())),
            d(2, Delta::ToolArguments(": \"Europe/".into())),
            d(2, Delta::ToolArguments("Paris\"}".into())),
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 82,
                output_tokens: 41,
                cached_input_tokens: 64,
                cache_creation_tokens: 0,
                reasoning_tokens: 0,
            }),
            StreamEvent::Done,
        ]
    }

    /// Feeds `pieces` through the framer, the SSE parser and a decoder.
    fn decode_stream(pieces: &[&[u8]]) -> (Vec<StreamEvent>, bool) {
        let mut decoder = StreamDecoder::new();
        let (events, _) = decode_pieces(&mut decoder, pieces);
        (events, decoder.is_done())
    }

    #[test]
    fn decodes_a_recorded_stream_however_it_is_split() {
        let stream = recorded_stream();
        let bytes = stream.as_bytes();
        let want = recorded_events();
        assert_well_formed(&want);
        let (got, done) = decode_stream(&[bytes]);
        assert_eq!(got, want);
        assert!(done);
        for i in 0..=bytes.len() {
            let (got, done) = decode_stream(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(got, want, "split at {i}");
            assert!(done);
        }
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_stream(&single).0, want);
    }

    /// The argument text of each tool-call block, in block order.
    fn tool_arguments(events: &[StreamEvent]) -> Vec<(String, String)> {
        let mut calls: Vec<(usize, String, String)> = Vec::new();
        for e in events {
            match e {
                StreamEvent::BlockStart {
                    index,
                    kind: BlockKind::ToolCall { id, .. },
                } => calls.push((*index, id.clone(), String::new())),
                StreamEvent::Delta {
                    index,
                    delta: Delta::ToolArguments(a),
                } => {
                    let call = calls.iter_mut().find(|c| c.0 == *index).unwrap();
                    call.2.push_str(a);
                }
                _ => {}
            }
        }
        calls.into_iter().map(|(_, id, args)| (id, args)).collect()
    }

    #[test]
    fn interleaved_tool_calls_come_out_in_order() {
        let cases: Vec<Vec<String>> = vec![
            // Round robin over two calls.
            vec![
                tool_start(0, "call_a", "f"),
                tool_start(1, "call_b", "g"),
                tool_args(0, "{\"a\":"),
                tool_args(1, "{\"b\":"),
                tool_args(0, "\"}{\"}"),
                tool_args(1, "2}"),
                finish("tool_calls"),
            ],
            // The second call finishes before the first.
            vec![
                tool_start(0, "call_a", "f"),
                tool_args(0, "{\"a\":"),
                tool_start(1, "call_b", "g"),
                tool_args(1, "{\"b\":2}"),
                tool_args(0, "\"}{\"}"),
                finish("tool_calls"),
            ],
            // Both calls in one delta, then text after them.
            vec![
                delta(json!({"tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}},
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{\"b\":2}"}}
                ]})),
                delta(json!({"content": "x"})),
                tool_args(0, "\"}{\"}"),
                finish("tool_calls"),
            ],
            // Every call numbered 0, told apart by id.
            vec![
                tool_start(0, "call_a", "f"),
                tool_args(0, "{\"a\":"),
                tool_args(0, "\"}{\"}"),
                tool_start(0, "call_b", "g"),
                tool_args(0, "{\"b\":2}"),
                finish("tool_calls"),
            ],
            // No index at all: ids, then the latest call.
            vec![
                delta(
                    json!({"tool_calls": [{"id": "call_a", "function": {"name": "f", "arguments": "{\"a\":"}}]}),
                ),
                delta(json!({"tool_calls": [{"function": {"arguments": "\"}{\"}"}}]})),
                delta(
                    json!({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{\"b\""}}]}),
                ),
                delta(json!({"tool_calls": [{"id": "call_b", "function": {"arguments": ":2}"}}]})),
                finish("tool_calls"),
            ],
            // A call whose arguments never close is still emitted whole at the end.
            vec![
                tool_start(0, "call_a", "f"),
                tool_start(1, "call_b", "g"),
                tool_args(1, "{\"b\":2}"),
                tool_args(0, "{\"a\":\"}{\"}"),
                "data: [DONE]\n\n".to_owned(),
            ],
        ];
        for (n, case) in cases.into_iter().enumerate() {
            let stream = case.concat();
            let (events, _) = decode_stream(&[stream.as_bytes()]);
            let mut checked = events.clone();
            if !checked.iter().any(|e| matches!(e, StreamEvent::Done)) {
                checked.push(StreamEvent::Done);
            }
            assert_well_formed(&checked);
            let want = [("call_a", "{\"a\":\"}{\"}"), ("call_b", "{\"b\":2}")]
                .map(|(id, a)| (id.to_owned(), a.to_owned()));
            assert_eq!(tool_arguments(&events), want, "case {n}: {events:#?}");
        }
    }

    #[test]
    fn decodes_thinking_refusals_and_odd_providers() {
        let stream = [
            // Azure's prompt-filter chunk comes first, with no choices and no model.
            "data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"model\":\"\",\"choices\":[],\"prompt_filter_results\":[]}\n\n"
                .to_owned(),
            delta(json!({"role": "assistant", "reasoning_content": "Hmm"})),
            delta(json!({"reasoning_content": ", fine", "thinking_blocks": [{"type": "thinking", "thinking": ", fine"}]})),
            delta(json!({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig"}]})),
            delta(json!({"thinking_blocks": [{"type": "redacted_thinking", "data": "opaque"}]})),
            delta(json!({"refusal": "I can't"})),
            // A call in one piece, without `index`.
            delta(json!({"tool_calls": [{"id": "call_z", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})),
            chunk(json!({"choices": [{"index": 1, "delta": {"content": "other choice"}, "finish_reason": "stop"}]})),
            chunk(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2}})),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let (events, done) = decode_stream(&[stream.as_bytes()]);
        assert!(done);
        assert_well_formed(&events);
        let d = |index, delta| StreamEvent::Delta { index, delta };
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: "chatcmpl-B9".into(),
                    model: "gpt-4o-2024-08-06".into()
                },
                StreamEvent::BlockStart {
                    index: 0,
                    kind: BlockKind::Thinking
                },
                d(0, Delta::Thinking("Hmm".into())),
                d(0, Delta::Thinking(", fine".into())),
                d(0, Delta::Signature("sig".into())),
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::BlockStart {
                    index: 1,
                    kind: BlockKind::RedactedThinking {
                        data: "opaque".into()
                    }
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::BlockStart {
                    index: 2,
                    kind: BlockKind::Text
                },
                d(2, Delta::Text("I can't".into())),
                StreamEvent::BlockStop { index: 2 },
                StreamEvent::BlockStart {
                    index: 3,
                    kind: BlockKind::ToolCall {
                        id: "call_z".into(),
                        name: "f".into()
                    }
                },
                d(3, Delta::ToolArguments("{}".into())),
                StreamEvent::BlockStop { index: 3 },
                StreamEvent::Finish {
                    stop: StopReason::EndTurn
                },
                StreamEvent::Usage(Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                    ..Usage::default()
                }),
                StreamEvent::Done,
            ]
        );
    }

    #[test]
    fn stream_errors_and_bad_chunks() {
        let stream = [
            delta(json!({"content": "partial"})),
            "data: {\"error\":{\"message\":\"Selected model is at capacity\",\"type\":\"service_unavailable_error\",\"code\":\"server_is_overloaded\"}}\n\n".to_owned(),
            delta(json!({"content": "ignored"})),
        ]
        .concat();
        let (events, done) = decode_stream(&[stream.as_bytes()]);
        assert!(!done);
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Error(ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "Selected model is at capacity".into(),
            }))
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, StreamEvent::Delta { .. }))
                .count(),
            1
        );

        let mut decoder = StreamDecoder::new();
        let bad = SseEvent {
            event: None,
            data: "{not json".into(),
        };
        assert!(decoder.decode(&bad).is_err());
        let keepalive = SseEvent {
            event: None,
            data: String::new(),
        };
        assert_eq!(decoder.decode(&keepalive).unwrap(), vec![]);
    }

    /// Encodes `events`, then decodes the bytes back.
    fn through_encoder(events: &[StreamEvent], include_usage: bool) -> (Vec<StreamEvent>, Vec<Value>, Bytes) {
        let mut encoder = StreamEncoder::new(include_usage);
        let mut out = BytesMut::new();
        for e in events {
            encoder.encode(e, &mut out);
        }
        let out = out.freeze();
        let chunks = parse_events(&out)
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        (decode_stream(&[&out]).0, chunks, out)
    }

    fn thinking_events() -> Vec<StreamEvent> {
        let d = |index, delta| StreamEvent::Delta { index, delta };
        vec![
            StreamEvent::Start {
                id: "msg_01".into(),
                model: "claude-sonnet-4".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            d(0, Delta::Thinking("Let me think".into())),
            d(0, Delta::Signature("EqQBCkgIAR==".into())),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::RedactedThinking {
                    data: "opaque".into(),
                },
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                kind: BlockKind::Text,
            },
            d(2, Delta::Text("Hi".into())),
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::Finish {
                stop: StopReason::EndTurn,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 5,
                output_tokens: 7,
                cached_input_tokens: 2,
                cache_creation_tokens: 0,
                reasoning_tokens: 3,
            }),
            StreamEvent::Done,
        ]
    }

    #[test]
    fn encoder_output_decodes_to_the_same_events() {
        for events in [recorded_events(), thinking_events()] {
            let (got, chunks, _) = through_encoder(&events, true);
            assert_eq!(got, events);
            for c in &chunks {
                assert_eq!(c["object"], "chat.completion.chunk");
                assert_eq!(c["id"], chunks[0]["id"]);
                assert_eq!(c["created"], chunks[0]["created"]);
                assert_eq!(c["model"], chunks[0]["model"]);
            }
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        }
    }

    #[test]
    fn encoder_writes_openai_chunks() {
        let (_, chunks, raw) = through_encoder(&recorded_events(), true);
        let deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .map(|c| &c["delta"])
            .collect();
        assert_eq!(*deltas[1], json!({"content": "Let me"}));
        assert_eq!(
            *deltas[3],
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            *deltas[4],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]})
        );
        assert_eq!(
            *deltas[8],
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                "function": {"name": "get_time", "arguments": ""}}]})
        );
        let last = &chunks[chunks.len() - 1];
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(raw.ends_with(b"data: [DONE]\n\n"));
    }

    #[test]
    fn usage_chunk_only_when_the_caller_asked() {
        let (got, chunks, _) = through_encoder(&recorded_events(), false);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        let want: Vec<StreamEvent> = recorded_events()
            .into_iter()
            .filter(|e| !matches!(e, StreamEvent::Usage(_)))
            .collect();
        assert_eq!(got, want);

        // Usage before Finish still comes after the finish chunk.
        let mut events = recorded_events();
        let usage = events.remove(events.len() - 2);
        events.insert(events.len() - 2, usage);
        let (_, chunks, _) = through_encoder(&events, true);
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert!(chunks[chunks.len() - 1].get("usage").is_some());
    }

    #[test]
    fn encoder_ends_an_errored_stream_with_the_error_only() {
        let events = vec![
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "m".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("par".into()),
            },
            StreamEvent::Error(ErrorInfo {
                status: 503,
                kind: ErrorKind::Overloaded,
                message: "Overloaded".into(),
            }),
            StreamEvent::Done,
        ];
        let (got, chunks, raw) = through_encoder(&events, true);
        assert!(!raw.windows(6).any(|w| w == b"[DONE]"));
        assert_eq!(
            chunks.last().unwrap(),
            &json!({"error": {"message": "Overloaded", "type": "service_unavailable_error", "param": null,
                "code": "server_is_overloaded"}})
        );
        assert_eq!(got.last(), Some(&events[3]));
    }
}
