//! Between a whole answer and its stream, in the canonical model: [`Assembler`] folds
//! stream events into a [`ChatResponse`], [`events`] unfolds a response into a well-formed
//! event sequence. Wire formats stay in `formats/`; this works on [`ir`] only.

use crate::formats::ir::{BlockKind, ChatResponse, Delta, Part, StopReason, StreamEvent, Usage};

/// The events of a stream that says exactly what `resp` says: `Start`, one block per part
/// (`BlockStart`, its deltas, `BlockStop`) numbered from 0, `Finish`, `Usage`, `Done`.
/// Parts an answer cannot hold (images, tool results) are skipped.
pub fn events(resp: &ChatResponse) -> Vec<StreamEvent> {
    let mut out = Vec::with_capacity(resp.parts.len() * 3 + 4);
    out.push(StreamEvent::Start {
        id: resp.id.clone(),
        model: resp.model.clone(),
    });
    let mut index = 0;
    for part in &resp.parts {
        let (kind, deltas) = match part {
            Part::Text { text, .. } => (BlockKind::Text, vec![Delta::Text(text.clone())]),
            Part::Thinking { text, signature } => {
                let mut deltas = vec![Delta::Thinking(text.clone())];
                deltas.extend(signature.clone().map(Delta::Signature));
                (BlockKind::Thinking, deltas)
            }
            Part::RedactedThinking { data } => {
                (BlockKind::RedactedThinking { data: data.clone() }, Vec::new())
            }
            Part::ToolCall { id, name, arguments } => (
                BlockKind::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                },
                vec![Delta::ToolArguments(arguments.clone())],
            ),
            Part::Image { .. } | Part::ToolResult { .. } => continue,
        };
        out.push(StreamEvent::BlockStart { index, kind });
        out.extend(
            deltas
                .into_iter()
                .filter(|d| !delta_is_empty(d))
                .map(|delta| StreamEvent::Delta { index, delta }),
        );
        out.push(StreamEvent::BlockStop { index });
        index += 1;
    }
    out.push(StreamEvent::Finish {
        stop: resp.stop.clone(),
    });
    out.push(StreamEvent::Usage(resp.usage));
    out.push(StreamEvent::Done);
    out
}

fn delta_is_empty(delta: &Delta) -> bool {
    match delta {
        Delta::Text(s) | Delta::Thinking(s) | Delta::Signature(s) | Delta::ToolArguments(s) => s.is_empty(),
    }
}

/// Folds the events of one stream into the whole answer they make.
///
/// Deltas are appended to the part their block started (signatures to the thinking block
/// they close, argument fragments to their tool call); a text or thinking delta without a
/// block starts one. The answer is complete once `Done` arrives; an `Error` spoils it.
#[derive(Debug, Default)]
pub struct Assembler {
    resp: ChatResponse,
    /// Stream block index → position in `resp.parts`.
    blocks: Vec<(usize, usize)>,
    stop: Option<StopReason>,
    usage: Option<Usage>,
    done: bool,
    failed: bool,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: StreamEvent) {
        if self.done || self.failed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                self.resp.id = id;
                self.resp.model = model;
            }
            StreamEvent::BlockStart { index, kind } => {
                let part = match kind {
                    BlockKind::Text => Part::Text {
                        text: String::new(),
                        cache_control: None,
                    },
                    BlockKind::Thinking => Part::Thinking {
                        text: String::new(),
                        signature: None,
                    },
                    BlockKind::RedactedThinking { data } => Part::RedactedThinking { data },
                    BlockKind::ToolCall { id, name } => Part::ToolCall {
                        id,
                        name,
                        arguments: String::new(),
                    },
                };
                self.open(index, part);
            }
            StreamEvent::Delta { index, delta } => self.delta(index, delta),
            StreamEvent::BlockStop { .. } => {}
            StreamEvent::Finish { stop } => self.stop = Some(stop),
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Error(_) => self.failed = true,
            StreamEvent::Done => self.done = true,
        }
    }

    /// The answer, if the stream completed without error; `usage` stands in for counts the
    /// stream did not carry. A tool call that streamed no arguments gets `{}`.
    pub fn finish(self, usage: Usage) -> Option<ChatResponse> {
        if !self.done || self.failed {
            return None;
        }
        let mut resp = self.resp;
        for part in &mut resp.parts {
            if let Part::ToolCall { arguments, .. } = part
                && arguments.trim().is_empty()
            {
                "{}".clone_into(arguments);
            }
        }
        resp.stop = self.stop.unwrap_or_else(|| {
            let called = resp.parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
            if called {
                StopReason::ToolUse
            } else {
                StopReason::EndTurn
            }
        });
        resp.usage = self.usage.unwrap_or(usage);
        Some(resp)
    }

    fn open(&mut self, index: usize, part: Part) {
        let position = self.resp.parts.len();
        self.resp.parts.push(part);
        self.blocks.retain(|(i, _)| *i != index);
        self.blocks.push((index, position));
    }

    fn delta(&mut self, index: usize, delta: Delta) {
        let position = self
            .blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, p)| *p);
        let position = match (position, &delta) {
            (Some(p), _) => p,
            (None, Delta::Text(_)) => {
                self.open(
                    index,
                    Part::Text {
                        text: String::new(),
                        cache_control: None,
                    },
                );
                self.resp.parts.len() - 1
            }
            (None, Delta::Thinking(_)) => {
                self.open(
                    index,
                    Part::Thinking {
                        text: String::new(),
                        signature: None,
                    },
                );
                self.resp.parts.len() - 1
            }
            (None, Delta::Signature(_) | Delta::ToolArguments(_)) => return,
        };
        let Some(part) = self.resp.parts.get_mut(position) else {
            return;
        };
        match (part, delta) {
            (Part::Text { text, .. }, Delta::Text(more)) => text.push_str(&more),
            (Part::Thinking { text, .. }, Delta::Thinking(more)) => text.push_str(&more),
            (Part::Thinking { signature, .. }, Delta::Signature(more)) => {
                signature.get_or_insert_with(String::new).push_str(&more)
            }
            (Part::ToolCall { arguments, .. }, Delta::ToolArguments(more)) => arguments.push_str(&more),
            // A delta of another kind than its block: not something a decoder produces.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> ChatResponse {
        ChatResponse {
            id: "msg_1".into(),
            model: "m".into(),
            parts: vec![
                Part::Thinking {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                Part::RedactedThinking {
                    data: "opaque".into(),
                },
                Part::Text {
                    text: "Hello".into(),
                    cache_control: None,
                },
                Part::ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into(),
                },
            ],
            stop: StopReason::ToolUse,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
            created: None,
        }
    }

    #[test]
    fn events_then_assembly_round_trip() {
        let resp = answer();
        let events = events(&resp);
        assert!(matches!(events.first(), Some(StreamEvent::Start { .. })));
        assert_eq!(events.last(), Some(&StreamEvent::Done));
        assert!(matches!(
            &events[events.len() - 3..],
            [
                StreamEvent::Finish { .. },
                StreamEvent::Usage(_),
                StreamEvent::Done
            ]
        ));
        let mut asm = Assembler::new();
        for event in events {
            asm.push(event);
        }
        assert_eq!(asm.finish(Usage::default()), Some(resp));
    }

    #[test]
    fn fragments_are_joined_and_gaps_filled() {
        let mut asm = Assembler::new();
        let events = [
            StreamEvent::Start {
                id: "x".into(),
                model: "m".into(),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("He".into()),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("llo".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                },
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::Done,
        ];
        for event in events {
            asm.push(event);
        }
        let fallback = Usage {
            input_tokens: 3,
            ..Usage::default()
        };
        let resp = asm.finish(fallback).unwrap();
        assert_eq!(resp.usage, fallback);
        assert_eq!(resp.stop, StopReason::ToolUse);
        assert_eq!(
            resp.parts,
            vec![
                Part::Text {
                    text: "Hello".into(),
                    cache_control: None
                },
                Part::ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn incomplete_or_failed_streams_make_no_answer() {
        let mut cut = Assembler::new();
        cut.push(StreamEvent::Start {
            id: "x".into(),
            model: "m".into(),
        });
        assert_eq!(cut.finish(Usage::default()), None);

        let mut failed = Assembler::new();
        failed.push(StreamEvent::Error(crate::formats::ir::ErrorInfo {
            status: 500,
            kind: crate::formats::ir::ErrorKind::Server,
            message: "boom".into(),
        }));
        failed.push(StreamEvent::Done);
        assert_eq!(failed.finish(Usage::default()), None);
    }
}
