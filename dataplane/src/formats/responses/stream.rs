//! Canonical stream events → the Responses API's stream, the event sequence the OpenAI SDKs
//! expect: `response.created`, `response.in_progress`, then for each content block an output
//! item (`response.output_item.added`, its parts and deltas, `response.output_item.done`), and
//! `response.completed` (or `incomplete`) with every item and the usage. Every event carries
//! its `sequence_number`. A provider error, or a stream that ends without its end, becomes an
//! `error` event: never a clean completion.

use bytes::BytesMut;
use serde_json::{Map, Value, json};

use super::reasoning;
use super::response::{response_id, status, usage};
use crate::formats::ir::{BlockKind, Delta, Part, StopReason, StreamEvent, Usage};
use crate::formats::sse::write_event;

/// One output item as it streams.
#[derive(Debug)]
struct Item {
    /// The canonical block it comes from.
    block: usize,
    kind: ItemKind,
    id: String,
    /// Text, reasoning text, or the call's arguments so far.
    text: String,
    /// A thinking block's signature so far, or a redacted block's data (`reasoning`).
    signature: String,
    redacted: Option<String>,
}

#[derive(Debug)]
enum ItemKind {
    Message,
    Reasoning,
    Call { call_id: String, name: String },
}

/// Text, reasoning and arguments a stream holds for its final `response.completed` event (which
/// repeats every output item whole), bytes; past it the stream ends with an `error` event, as an
/// upstream answer past the same size would.
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// Encodes one translated stream for a Responses caller.
#[derive(Debug)]
pub struct StreamEncoder {
    /// What the response says of the request (`response::echo`).
    echo: Map<String, Value>,
    id: String,
    model: String,
    created_at: i64,
    sequence: u64,
    items: Vec<Item>,
    stop: StopReason,
    usage: Usage,
    /// Bytes of text held in `items`.
    held: usize,
    carry_thinking: bool,
    closed: bool,
}

impl StreamEncoder {
    /// `carry_thinking`: the answer is Anthropic's, whose signed thinking goes out in reasoning
    /// items' `encrypted_content` (`reasoning`).
    pub fn new(echo: Map<String, Value>, carry_thinking: bool) -> Self {
        StreamEncoder {
            echo,
            carry_thinking,
            id: String::new(),
            model: String::new(),
            created_at: drover_proto::model::now_unix_ms() / 1000,
            sequence: 0,
            items: Vec::new(),
            stop: StopReason::EndTurn,
            usage: Usage::default(),
            held: 0,
            closed: false,
        }
    }

    fn event(&mut self, kind: &str, mut body: Map<String, Value>, out: &mut BytesMut) {
        body.insert("type".into(), json!(kind));
        body.insert("sequence_number".into(), json!(self.sequence));
        self.sequence += 1;
        write_event(out, Some(kind), &Value::Object(body).to_string());
    }

    /// The `response` object as it stands.
    fn response(&self, status: &str, incomplete: Value, done: bool) -> Value {
        let mut r = self.echo.clone();
        r.insert("id".into(), json!(self.id));
        r.insert("object".into(), json!("response"));
        r.insert("created_at".into(), json!(self.created_at));
        r.insert("status".into(), json!(status));
        r.insert("incomplete_details".into(), incomplete);
        r.insert("error".into(), Value::Null);
        r.insert("model".into(), json!(self.model));
        let output = if done {
            self.items.iter().map(|i| item_json(i, "completed")).collect()
        } else {
            Vec::new()
        };
        r.insert("output".into(), Value::Array(output));
        r.insert(
            "usage".into(),
            if done { usage(&self.usage) } else { Value::Null },
        );
        Value::Object(r)
    }

    fn position(&self, block: usize) -> Option<usize> {
        self.items.iter().rposition(|i| i.block == block)
    }

    pub fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        if self.closed {
            return;
        }
        match event {
            StreamEvent::Start { id, model } => {
                self.id = response_id(id);
                self.model.clone_from(model);
                let response = self.response("in_progress", Value::Null, false);
                self.event("response.created", obj([("response", response.clone())]), out);
                self.event("response.in_progress", obj([("response", response)]), out);
            }
            StreamEvent::BlockStart { index, kind } => {
                let n = self.items.len();
                let base = if self.id.is_empty() {
                    "resp"
                } else {
                    self.id.as_str()
                };
                let redacted = match kind {
                    BlockKind::RedactedThinking { data } if self.carry_thinking => Some(data.clone()),
                    _ => None,
                };
                let (kind, id) = match kind {
                    BlockKind::Text => (ItemKind::Message, format!("msg_{base}_{n}")),
                    BlockKind::Thinking | BlockKind::RedactedThinking { .. } => {
                        (ItemKind::Reasoning, format!("rs_{base}_{n}"))
                    }
                    BlockKind::ToolCall { id, name } => (
                        ItemKind::Call {
                            call_id: id.clone(),
                            name: name.clone(),
                        },
                        format!("fc_{id}"),
                    ),
                };
                self.items.push(Item {
                    block: *index,
                    kind,
                    id,
                    text: String::new(),
                    signature: String::new(),
                    redacted,
                });
                let item = &self.items[n];
                let added = item_json(item, "in_progress");
                let item_id = item.id.clone();
                let is_message = matches!(item.kind, ItemKind::Message);
                let is_reasoning = matches!(item.kind, ItemKind::Reasoning);
                self.event(
                    "response.output_item.added",
                    obj([("output_index", json!(n)), ("item", added)]),
                    out,
                );
                if is_message {
                    self.event(
                        "response.content_part.added",
                        obj([
                            ("item_id", json!(item_id)),
                            ("output_index", json!(n)),
                            ("content_index", json!(0)),
                            (
                                "part",
                                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
                            ),
                        ]),
                        out,
                    );
                } else if is_reasoning {
                    self.event(
                        "response.reasoning_summary_part.added",
                        obj([
                            ("item_id", json!(item_id)),
                            ("output_index", json!(n)),
                            ("summary_index", json!(0)),
                            ("part", json!({"type": "summary_text", "text": ""})),
                        ]),
                        out,
                    );
                }
            }
            StreamEvent::Delta { index, delta } => {
                let Some(n) = self.position(*index) else {
                    return;
                };
                let (kind, text) = match delta {
                    Delta::Text(t) => (Some("response.output_text.delta"), t),
                    Delta::Thinking(t) => (Some("response.reasoning_summary_text.delta"), t),
                    Delta::ToolArguments(t) => (Some("response.function_call_arguments.delta"), t),
                    // No event of its own: it goes out in the finished item.
                    Delta::Signature(s) => (None, s),
                };
                self.held += text.len();
                if self.held > MAX_HELD_BYTES {
                    self.fail(
                        "response_too_large",
                        &format!(
                            "the answer is longer than the {} MiB a translated stream holds",
                            MAX_HELD_BYTES >> 20
                        ),
                        out,
                    );
                    return;
                }
                let Some(kind) = kind else {
                    if self.carry_thinking {
                        self.items[n].signature.push_str(text);
                    }
                    return;
                };
                self.items[n].text.push_str(text);
                let mut body = obj([
                    ("item_id", json!(self.items[n].id)),
                    ("output_index", json!(n)),
                    ("delta", json!(text)),
                ]);
                match self.items[n].kind {
                    ItemKind::Message => {
                        body.insert("content_index".into(), json!(0));
                        body.insert("logprobs".into(), json!([]));
                    }
                    ItemKind::Reasoning => {
                        body.insert("summary_index".into(), json!(0));
                    }
                    ItemKind::Call { .. } => {}
                }
                self.event(kind, body, out);
            }
            StreamEvent::BlockStop { index } => {
                let Some(n) = self.position(*index) else {
                    return;
                };
                let item = &self.items[n];
                let (id, text) = (item.id.clone(), item.text.clone());
                let done = item_json(item, "completed");
                match &item.kind {
                    ItemKind::Message => {
                        self.event(
                            "response.output_text.done",
                            obj([
                                ("item_id", json!(id)),
                                ("output_index", json!(n)),
                                ("content_index", json!(0)),
                                ("text", json!(text)),
                                ("logprobs", json!([])),
                            ]),
                            out,
                        );
                        self.event(
                            "response.content_part.done",
                            obj([
                                ("item_id", json!(id)),
                                ("output_index", json!(n)),
                                ("content_index", json!(0)),
                                (
                                    "part",
                                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []}),
                                ),
                            ]),
                            out,
                        );
                    }
                    ItemKind::Reasoning => {
                        self.event(
                            "response.reasoning_summary_text.done",
                            obj([
                                ("item_id", json!(id)),
                                ("output_index", json!(n)),
                                ("summary_index", json!(0)),
                                ("text", json!(text)),
                            ]),
                            out,
                        );
                        self.event(
                            "response.reasoning_summary_part.done",
                            obj([
                                ("item_id", json!(id)),
                                ("output_index", json!(n)),
                                ("summary_index", json!(0)),
                                ("part", json!({"type": "summary_text", "text": text})),
                            ]),
                            out,
                        );
                    }
                    ItemKind::Call { name, .. } => {
                        let name = name.clone();
                        self.event(
                            "response.function_call_arguments.done",
                            obj([
                                ("item_id", json!(id)),
                                ("output_index", json!(n)),
                                ("name", json!(name)),
                                ("arguments", json!(arguments(&text))),
                            ]),
                            out,
                        );
                    }
                }
                self.event(
                    "response.output_item.done",
                    obj([("output_index", json!(n)), ("item", done)]),
                    out,
                );
            }
            StreamEvent::Finish { stop } => self.stop = stop.clone(),
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::Done => {
                let (status, incomplete) = status(&self.stop);
                let kind = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                let response = self.response(status, incomplete, true);
                self.event(kind, obj([("response", response)]), out);
                self.closed = true;
            }
            StreamEvent::Error(e) => {
                let code = match e.kind {
                    crate::formats::ir::ErrorKind::RateLimit => "rate_limit_exceeded",
                    crate::formats::ir::ErrorKind::Overloaded => "server_is_overloaded",
                    _ => "server_error",
                };
                self.fail(code, &e.message, out);
            }
        }
    }

    /// Ends the stream with an `error` event; nothing follows.
    fn fail(&mut self, code: &str, message: &str, out: &mut BytesMut) {
        self.event(
            "error",
            obj([
                ("code", json!(code)),
                ("message", json!(message)),
                ("param", Value::Null),
            ]),
            out,
        );
        self.closed = true;
    }
}

/// A call's arguments: what was streamed, or `{}` when nothing was.
fn arguments(text: &str) -> &str {
    if text.trim().is_empty() { "{}" } else { text }
}

fn item_json(item: &Item, status: &str) -> Value {
    let done = status == "completed";
    match &item.kind {
        ItemKind::Message => json!({
            "type": "message",
            "id": item.id,
            "status": status,
            "role": "assistant",
            "content": if done {
                json!([{"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}])
            } else {
                json!([])
            },
        }),
        ItemKind::Reasoning => {
            let mut value = json!({
                "type": "reasoning",
                "id": item.id,
                "summary": if done && !item.text.is_empty() {
                    json!([{"type": "summary_text", "text": item.text}])
                } else {
                    json!([])
                },
            });
            let block = match &item.redacted {
                Some(data) => Part::RedactedThinking { data: data.clone() },
                None => Part::Thinking {
                    text: item.text.clone(),
                    signature: Some(item.signature.clone()),
                },
            };
            if done && let Some(sealed) = reasoning::seal([&block]) {
                value["encrypted_content"] = Value::String(sealed);
            }
            value
        }
        ItemKind::Call { call_id, name } => json!({
            "type": "function_call",
            "id": item.id,
            "call_id": call_id,
            "name": name,
            "arguments": if done { arguments(&item.text) } else { "" },
            "status": status,
        }),
    }
}

fn obj<const N: usize>(fields: [(&str, Value); N]) -> Map<String, Value> {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::ir::{ErrorInfo, ErrorKind};
    use crate::formats::sse::split_events;

    fn run(events: &[StreamEvent]) -> Vec<(String, Value)> {
        run_carrying(events, true)
    }

    fn run_carrying(events: &[StreamEvent], carry_thinking: bool) -> Vec<(String, Value)> {
        let mut enc = StreamEncoder::new(Map::new(), carry_thinking);
        let mut out = BytesMut::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        let bytes = out.freeze();
        split_events(&bytes)
            .map(|(_, e)| {
                let data: Value = serde_json::from_str(&e.data).unwrap();
                (e.event.clone().unwrap_or_default(), data)
            })
            .collect()
    }

    #[test]
    fn text_and_a_tool_call_stream_in_the_order_the_sdks_expect() {
        let events = run(&[
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "claude".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("Hel".into()),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("lo".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::ToolCall {
                    id: "toolu_1".into(),
                    name: "look".into(),
                },
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("{\"x\":".into()),
            },
            StreamEvent::Delta {
                index: 1,
                delta: Delta::ToolArguments("1}".into()),
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::Finish {
                stop: StopReason::ToolUse,
            },
            StreamEvent::Usage(Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            }),
            StreamEvent::Done,
        ]);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (kind, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], kind.as_str());
            assert_eq!(data["sequence_number"], i, "{data}");
        }
        assert_eq!(events[0].1["response"]["id"], "resp_msg_1");
        assert_eq!(events[6].1["text"], "Hello");
        assert_eq!(events[12].1["arguments"], "{\"x\":1}");
        let done = &events[14].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["type"], "function_call");
        assert_eq!(done["output"][1]["call_id"], "toolu_1");
        assert_eq!(done["usage"]["total_tokens"], 15);
    }

    #[test]
    fn a_truncated_answer_is_incomplete_and_an_error_is_never_a_completion() {
        let start = StreamEvent::Start {
            id: "m".into(),
            model: "x".into(),
        };
        let events = run(&[
            start.clone(),
            StreamEvent::Finish {
                stop: StopReason::MaxTokens,
            },
            StreamEvent::Done,
        ]);
        let last = &events.last().unwrap().1;
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );

        let events = run(&[
            start,
            StreamEvent::Error(ErrorInfo {
                status: 529,
                kind: ErrorKind::Overloaded,
                message: "overloaded".into(),
            }),
            StreamEvent::Done,
        ]);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["response.created", "response.in_progress", "error"]);
        assert_eq!(events[2].1["code"], "server_is_overloaded");
    }

    #[test]
    fn what_a_stream_holds_for_its_final_event_is_bounded() {
        let chunk = "x".repeat(1 << 20);
        let mut events = vec![
            StreamEvent::Start {
                id: "m".into(),
                model: "x".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Text,
            },
        ];
        events.extend((0..=(MAX_HELD_BYTES >> 20)).map(|_| StreamEvent::Delta {
            index: 0,
            delta: Delta::Text(chunk.clone()),
        }));
        events.push(StreamEvent::Done);
        let out = run(&events);
        let (last, data) = out.last().unwrap();
        assert_eq!(last, "error");
        assert_eq!(data["code"], "response_too_large");
        assert!(!out.iter().any(|(k, _)| k == "response.completed"));
    }

    #[test]
    fn signed_thinking_goes_out_in_the_finished_item_only_when_carried() {
        let events = [
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "claude".into(),
            },
            StreamEvent::BlockStart {
                index: 0,
                kind: BlockKind::Thinking,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Thinking("Hmm.".into()),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Signature("sig-1".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                kind: BlockKind::RedactedThinking {
                    data: "opaque".into(),
                },
            },
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::Finish {
                stop: StopReason::EndTurn,
            },
            StreamEvent::Done,
        ];
        let carried = run_carrying(&events, true);
        let (_, completed) = carried.last().unwrap();
        let output = completed["response"]["output"].as_array().unwrap();
        let open =
            |item: &Value| super::reasoning::open(item["encrypted_content"].as_str().unwrap()).unwrap();
        assert_eq!(
            open(&output[0]),
            [Part::Thinking {
                text: "Hmm.".into(),
                signature: Some("sig-1".into())
            }]
        );
        assert_eq!(
            open(&output[1]),
            [Part::RedactedThinking {
                data: "opaque".into()
            }]
        );
        assert!(
            carried.iter().all(|(name, _)| !name.contains("signature")),
            "the signature has no event of its own"
        );

        let plain = run_carrying(&events, false);
        let (_, completed) = plain.last().unwrap();
        let output = completed["response"]["output"].as_array().unwrap();
        assert_eq!(output[0]["summary"][0]["text"], "Hmm.");
        assert!(
            output.iter().all(|i| i.get("encrypted_content").is_none()),
            "{output:?}"
        );
    }
}
