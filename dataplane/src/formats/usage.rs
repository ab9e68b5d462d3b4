//! Token counts read from answers that are relayed as they are (same format in and out),
//! without deserializing more than the `usage` object: whole bodies, and stream events.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::formats::ir::Usage;
use crate::formats::openai::ShallowBody;

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// OpenAI's usage object, in its chat/completions/embeddings form and its Responses form.
#[derive(Deserialize)]
struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    output_tokens_details: Option<Details>,
}

impl OpenAiUsage {
    fn to_ir(&self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .or(self.input_tokens_details.as_ref())
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .or(self.output_tokens_details.as_ref())
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        Usage {
            input_tokens: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached_input_tokens: cached,
            cache_creation_tokens: 0,
            reasoning_tokens: reasoning,
        }
    }
}

/// Anthropic's usage object; `input_tokens` there excludes cache reads and writes.
#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    fn merge_into(self, usage: &mut Usage, base: &mut AnthropicUsage) {
        // Stream counts are cumulative; later events may omit fields.
        base.input_tokens = self.input_tokens.or(base.input_tokens);
        base.output_tokens = self.output_tokens.or(base.output_tokens);
        base.cache_read_input_tokens = self.cache_read_input_tokens.or(base.cache_read_input_tokens);
        base.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .or(base.cache_creation_input_tokens);
        let read = base.cache_read_input_tokens.unwrap_or(0);
        let created = base.cache_creation_input_tokens.unwrap_or(0);
        *usage = Usage {
            input_tokens: base.input_tokens.unwrap_or(0) + read + created,
            output_tokens: base.output_tokens.unwrap_or(0),
            cached_input_tokens: read,
            cache_creation_tokens: created,
            reasoning_tokens: 0,
        };
    }
}

/// The `usage` of an OpenAI-format body (chat, completions, embeddings, responses).
pub fn openai_body(body: &[u8]) -> Option<Usage> {
    if let Some(u) = trailing_usage::<OpenAiUsage>(body) {
        return Some(u.to_ir());
    }
    let parsed = ShallowBody::parse(body).ok()?;
    let raw = parsed.get("usage")?;
    serde_json::from_str::<OpenAiUsage>(raw.get())
        .ok()
        .map(|u| u.to_ir())
}

/// Providers put `usage` last: parse just that object when the body ends with it, instead of
/// the whole body. `None` when the body is not shaped that way (the caller then parses it all).
fn trailing_usage<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    const KEY: &[u8] = b"\"usage\"";
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if body[end] != b'}' {
        return None;
    }
    let start = body.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = &body[start + KEY.len()..end];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let value = &rest[colon + 1..];
    // The value must be one whole object and the last thing in the body.
    let mut de = serde_json::Deserializer::from_slice(value);
    let parsed = T::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(parsed)
}

/// The `usage` of an Anthropic message body.
pub fn anthropic_body(body: &[u8]) -> Option<Usage> {
    let parsed = ShallowBody::parse(body).ok()?;
    let raw = parsed.get("usage")?;
    let u: AnthropicUsage = serde_json::from_str(raw.get()).ok()?;
    let mut usage = Usage::default();
    u.merge_into(&mut usage, &mut AnthropicUsage::default());
    Some(usage)
}

/// Which stream is being watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// OpenAI chat or completions chunks.
    OpenAiChunks,
    /// Anthropic message events.
    Anthropic,
    /// OpenAI Responses events.
    Responses,
}

/// Watches a relayed stream for its usage and counts the content relayed.
pub struct StreamTap {
    kind: StreamKind,
    /// Remove the usage-only chunk: the gateway asked for it, the caller did not.
    strip_usage_chunk: bool,
    anthropic: AnthropicUsage,
    pub usage: Option<Usage>,
    pub content_chars: usize,
}

impl StreamTap {
    pub fn new(kind: StreamKind, strip_usage_chunk: bool) -> Self {
        StreamTap {
            kind,
            strip_usage_chunk,
            anthropic: AnthropicUsage::default(),
            usage: None,
            content_chars: 0,
        }
    }

    /// Observes whole events; returns them, without the usage chunk when it is to be stripped.
    pub fn observe(&mut self, events: Bytes) -> Bytes {
        let mut keep: Option<BytesMut> = None;
        let mut start = 0;
        for end in boundaries(&events) {
            let event = &events[start..end];
            let drop_it = self.event(event);
            match (&mut keep, drop_it) {
                (None, true) => {
                    let mut kept = BytesMut::with_capacity(events.len());
                    kept.extend_from_slice(&events[..start]);
                    keep = Some(kept);
                }
                (Some(kept), false) => kept.extend_from_slice(event),
                _ => {}
            }
            start = end;
        }
        match keep {
            Some(mut kept) => {
                kept.extend_from_slice(&events[start..]);
                kept.freeze()
            }
            None => events,
        }
    }

    /// Looks at one event; true if it is to be removed.
    fn event(&mut self, event: &[u8]) -> bool {
        match self.kind {
            StreamKind::OpenAiChunks => {
                self.content_chars += string_values_len(event, b"\"content\":\"");
                if !contains(event, b"\"usage\":{") {
                    return false;
                }
                let Some(data) = data_of(event) else { return false };
                let Ok(parsed) = ShallowBody::parse(data.as_bytes()) else {
                    return false;
                };
                if let Some(u) = parsed
                    .get("usage")
                    .and_then(|raw| serde_json::from_str::<OpenAiUsage>(raw.get()).ok())
                {
                    self.usage = Some(u.to_ir());
                }
                self.strip_usage_chunk && parsed.get("choices").is_some_and(|c| c.get().trim() == "[]")
            }
            StreamKind::Anthropic => {
                self.content_chars += string_values_len(event, b"\"text\":\"")
                    + string_values_len(event, b"\"partial_json\":\"")
                    + string_values_len(event, b"\"thinking\":\"");
                if !(contains(event, b"message_start") || contains(event, b"message_delta")) {
                    return false;
                }
                let Some(data) = data_of(event) else { return false };
                #[derive(Deserialize)]
                struct Event {
                    message: Option<Inner>,
                    usage: Option<AnthropicUsage>,
                }
                #[derive(Deserialize)]
                struct Inner {
                    usage: Option<AnthropicUsage>,
                }
                if let Ok(e) = serde_json::from_str::<Event>(&data) {
                    let mut usage = self.usage.unwrap_or_default();
                    if let Some(u) = e.message.and_then(|m| m.usage).or(e.usage) {
                        u.merge_into(&mut usage, &mut self.anthropic);
                        self.usage = Some(usage);
                    }
                }
                false
            }
            StreamKind::Responses => {
                self.content_chars += string_values_len(event, b"\"delta\":\"");
                if !contains(event, b"response.completed") && !contains(event, b"response.incomplete") {
                    return false;
                }
                let Some(data) = data_of(event) else { return false };
                #[derive(Deserialize)]
                struct Event {
                    response: Option<Inner>,
                }
                #[derive(Deserialize)]
                struct Inner {
                    usage: Option<OpenAiUsage>,
                }
                if let Ok(Event {
                    response: Some(Inner { usage: Some(u) }),
                }) = serde_json::from_str::<Event>(&data)
                {
                    self.usage = Some(u.to_ir());
                }
                false
            }
        }
    }
}

/// End offsets of the events in `events` (each ends with a blank line).
fn boundaries(events: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < events.len() {
        let (a, b) = (events[i], events[i + 1]);
        if a == b'\n' && b == b'\n' {
            out.push(i + 2);
            i += 2;
        } else if a == b'\n' && b == b'\r' && events.get(i + 2) == Some(&b'\n') {
            out.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `data:` payload of one event.
fn data_of(event: &[u8]) -> Option<String> {
    crate::formats::sse::parse_events(event)
        .into_iter()
        .next()
        .map(|e| e.data)
}

/// Total length of the JSON string values that follow `prefix` (e.g. `"content":"`), an
/// approximation of the characters relayed.
fn string_values_len(event: &[u8], prefix: &[u8]) -> usize {
    let mut total = 0;
    let mut rest = event;
    while let Some(pos) = rest.windows(prefix.len()).position(|w| w == prefix) {
        rest = &rest[pos + prefix.len()..];
        let mut escaped = false;
        let mut len = 0;
        for &c in rest {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
                continue;
            } else if c == b'"' {
                break;
            }
            len += 1;
        }
        total += len;
        rest = &rest[len.min(rest.len())..];
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_give_their_usage() {
        let chat = br#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        assert_eq!(
            openai_body(chat),
            Some(Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 4,
                cache_creation_tokens: 0,
                reasoning_tokens: 2
            })
        );
        let responses =
            br#"{"usage":{"input_tokens":7,"output_tokens":3,"input_tokens_details":{"cached_tokens":1}}}"#;
        assert_eq!(
            openai_body(responses).map(|u| (u.input_tokens, u.output_tokens, u.cached_input_tokens)),
            Some((7, 3, 1))
        );
        let anthropic = br#"{"usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":20,"cache_creation_input_tokens":3}}"#;
        assert_eq!(
            anthropic_body(anthropic),
            Some(Usage {
                input_tokens: 33,
                output_tokens: 5,
                cached_input_tokens: 20,
                cache_creation_tokens: 3,
                reasoning_tokens: 0
            })
        );
        assert_eq!(openai_body(b"{}"), None);
        // A `usage` inside message content is not the usage.
        let tricky = br#"{"choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        assert_eq!(
            openai_body(tricky).map(|u| (u.input_tokens, u.output_tokens)),
            Some((1, 2))
        );
        let usage_first = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4},"id":"x"}"#;
        assert_eq!(
            openai_body(usage_first).map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 4))
        );
    }

    #[test]
    fn openai_stream_usage_is_read_and_stripped_when_asked() {
        let events = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi there\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        );
        let mut tap = StreamTap::new(StreamKind::OpenAiChunks, true);
        let out = tap.observe(events.clone());
        assert_eq!(tap.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((9, 2)));
        assert_eq!(&out[..], &b"data: {\"choices\":[{\"delta\":{\"content\":\"hi there\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"[..]);
        assert_eq!(tap.content_chars, 8);
        let mut keep = StreamTap::new(StreamKind::OpenAiChunks, false);
        assert_eq!(keep.observe(events.clone()), events);
        assert!(keep.usage.is_some());
    }

    #[test]
    fn anthropic_stream_usage_is_cumulative() {
        let mut tap = StreamTap::new(StreamKind::Anthropic, false);
        let events = Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"abcd\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":30}}\n\n",
        );
        assert_eq!(tap.observe(events.clone()), events);
        let u = tap.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens),
            (112, 100, 30)
        );
        assert_eq!(tap.content_chars, 4);
    }

    #[test]
    fn responses_completed_event_gives_usage() {
        let mut tap = StreamTap::new(StreamKind::Responses, false);
        tap.observe(Bytes::from_static(
            b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}}\n\n",
        ));
        assert_eq!(tap.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((5, 6)));
    }
}
