//! Server-sent events: framing, parsing and writing.
//!
//! [`SseFramer`] cuts an arbitrary byte stream at event boundaries, so that only whole
//! events are forwarded and an error event can always be appended cleanly; it also notes
//! whether the terminal `data: [DONE]` event went by. [`parse_events`] turns whole events
//! into [`SseEvent`]s for translation; [`write_event`] writes one.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into runs of complete SSE events.
#[derive(Debug, Default)]
pub struct SseFramer {
    /// Bytes after the last event boundary seen.
    tail: BytesMut,
}

/// Index just past the last event boundary (a blank line) in `buf`, if any.
fn last_boundary(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        let (a, b) = (buf[i - 2], buf[i - 1]);
        if b == b'\n' && (a == b'\n' || (a == b'\r' && i >= 4 && buf[i - 3] == b'\n' && buf[i - 4] == b'\r'))
        {
            return Some(i);
        }
        if b == b'\r' && a == b'\r' {
            return Some(i);
        }
        i -= 1;
    }
    None
}

/// The event that ends a stream successfully, by wire format. Seeing it is what tells a
/// complete stream from a cut one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// OpenAI chat and completions: `data: [DONE]`.
    OpenAiDone,
    /// Anthropic messages: `event: message_stop` (or an `error` event, which ends it too).
    AnthropicStop,
    /// OpenAI Responses: `response.completed`, `response.incomplete`, `response.failed` or `error`.
    ResponsesEnd,
}

impl Terminal {
    /// Whether `events` (whole events) contain the terminal event.
    pub fn seen_in(self, events: &[u8]) -> bool {
        events.split(|&b| b == b'\n' || b == b'\r').any(|line| {
            let field = |name: &[u8]| {
                line.strip_prefix(name)
                    .map(|rest| rest.strip_prefix(b" ").unwrap_or(rest))
            };
            match self {
                // An error chunk ends an OpenAI stream too: nothing follows it.
                Terminal::OpenAiDone => {
                    field(b"data:").is_some_and(|d| d == b"[DONE]" || d.starts_with(b"{\"error\""))
                }
                Terminal::AnthropicStop => matches!(field(b"event:"), Some(b"message_stop" | b"error")),
                Terminal::ResponsesEnd => matches!(
                    field(b"event:"),
                    Some(b"response.completed" | b"response.incomplete" | b"response.failed" | b"error")
                ),
            }
        })
    }
}

impl SseFramer {
    /// Feeds a chunk; returns the complete events it finishes, if any.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.tail.is_empty() {
            match last_boundary(&chunk) {
                Some(end) if end == chunk.len() => Some(chunk),
                Some(end) => {
                    self.tail.extend_from_slice(&chunk[end..]);
                    Some(chunk.slice(..end))
                }
                None => {
                    self.tail.extend_from_slice(&chunk);
                    None
                }
            }
        } else {
            self.tail.extend_from_slice(&chunk);
            let end = last_boundary(&self.tail)?;
            Some(self.tail.split_to(end).freeze())
        }
    }

    /// Bytes of an unfinished event held back.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }
}

/// One parsed event: its `event:` name, if any, and its `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Parses whole events (as [`SseFramer::push`] returns them). Comments, `id:` and `retry:`
/// fields are skipped, as are events with neither a name nor data.
pub fn parse_events(events: &[u8]) -> Vec<SseEvent> {
    let text = String::from_utf8_lossy(events);
    let mut out = Vec::new();
    let mut current = SseEvent::default();
    let mut has_data = false;
    // Lines end with \r\n, \n or \r; a blank line ends an event.
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.split('\n') {
        if line.is_empty() {
            if has_data || current.event.is_some() {
                out.push(std::mem::take(&mut current));
            }
            has_data = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => current.event = Some(value.to_owned()),
            "data" => {
                if has_data {
                    current.data.push('\n');
                }
                current.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    if has_data || current.event.is_some() {
        out.push(current);
    }
    out
}

/// Writes one event: an optional `event:` line and one `data:` line per line of `data`.
pub fn write_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
}

/// The event sent to an OpenAI-format caller when a stream breaks before its end.
pub fn openai_error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": code }
    });
    Bytes::from(format!("data: {body}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"a\":1}\n\ndata: {\"b\":\"x\\n\"}\r\n\r\n: keepalive\n\nevent: e\ndata: {\"c\":3}\n\ndata: [DONE]\n\n";

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool, usize) {
        let mut framer = SseFramer::default();
        let mut out = Vec::new();
        let mut done = false;
        for c in chunks {
            if let Some(events) = framer.push(Bytes::copy_from_slice(c)) {
                assert!(
                    last_boundary(&events) == Some(events.len()),
                    "emitted a partial event"
                );
                done |= Terminal::OpenAiDone.seen_in(&events);
                out.extend_from_slice(&events);
            }
        }
        (out, done, framer.pending())
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let (out, done, pending) = run(&[STREAM]);
        assert_eq!(out, STREAM);
        assert!(done);
        assert_eq!(pending, 0);
    }

    #[test]
    fn same_events_however_the_bytes_are_split() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let (out, done, pending) = run(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(out, STREAM, "split at {i},{j}");
                assert!(done, "split at {i},{j}");
                assert_eq!(pending, 0);
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(run(&bytes).0, STREAM);
    }

    #[test]
    fn a_cut_stream_holds_back_the_partial_event_and_is_not_done() {
        let cut = &STREAM[..20];
        let (out, done, pending) = run(&[cut]);
        assert_eq!(out, b"data: {\"a\":1}\n\n");
        assert!(!done);
        assert_eq!(pending, 5);
    }

    #[test]
    fn done_must_be_a_whole_data_line() {
        assert!(!run(&[b"data: {\"text\":\"data: [DONE]\"}\n\n"]).1);
        assert!(run(&[b"data:[DONE]\n\n"]).1);
        assert!(!run(&[b"data: [DONE]"]).1, "not done until the event is complete");
    }

    #[test]
    fn parses_the_same_events_however_the_bytes_are_split() {
        let want = vec![
            SseEvent {
                event: None,
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "{\"b\":\"x\\n\"}".into(),
            },
            SseEvent {
                event: Some("e".into()),
                data: "{\"c\":3}".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for i in 0..=STREAM.len() {
            let mut framer = SseFramer::default();
            let mut got = Vec::new();
            for part in [&STREAM[..i], &STREAM[i..]] {
                if let Some(events) = framer.push(Bytes::copy_from_slice(part)) {
                    got.extend(parse_events(&events));
                }
            }
            assert_eq!(got, want, "split at {i}");
        }
    }

    #[test]
    fn multi_line_data_round_trips() {
        let mut out = BytesMut::new();
        write_event(&mut out, Some("message_start"), "line one\nline two");
        assert_eq!(
            &out[..],
            b"event: message_start\ndata: line one\ndata: line two\n\n"
        );
        assert_eq!(
            parse_events(&out),
            [SseEvent {
                event: Some("message_start".into()),
                data: "line one\nline two".into()
            }]
        );
        assert_eq!(
            parse_events(b"data:x\r\n\r\nevent: ping\n\n"),
            [
                SseEvent {
                    event: None,
                    data: "x".into()
                },
                SseEvent {
                    event: Some("ping".into()),
                    data: String::new()
                },
            ]
        );
    }

    #[test]
    fn terminal_events_by_format() {
        let cases: &[(Terminal, &[u8], bool)] = &[
            (
                Terminal::AnthropicStop,
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                true,
            ),
            (
                Terminal::AnthropicStop,
                b"event: message_delta\ndata: {}\n\n",
                false,
            ),
            (Terminal::AnthropicStop, b"event: error\ndata: {}\n\n", true),
            (
                Terminal::ResponsesEnd,
                b"event: response.completed\ndata: {}\n\n",
                true,
            ),
            (
                Terminal::ResponsesEnd,
                b"event: response.output_text.delta\ndata: {}\n\n",
                false,
            ),
            (Terminal::OpenAiDone, b"event: message_stop\n\n", false),
        ];
        for (terminal, events, want) in cases {
            assert_eq!(
                terminal.seen_in(events),
                *want,
                "{terminal:?} {}",
                String::from_utf8_lossy(events)
            );
        }
    }

    #[test]
    fn error_event_is_one_whole_event() {
        let e = openai_error_event("upstream stream ended early", "stream_incomplete");
        assert!(e.starts_with(b"data: {"));
        assert_eq!(last_boundary(&e), Some(e.len()));
        let json: serde_json::Value = serde_json::from_slice(&e[6..e.len() - 2]).unwrap();
        assert_eq!(json["error"]["code"], "stream_incomplete");
    }
}

#[cfg(test)]
mod crlf_tests {
    use super::*;

    #[test]
    fn crlf_framed_events_are_whole() {
        let mut framer = SseFramer::default();
        let out = framer.push(Bytes::from_static(
            b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n",
        ));
        assert_eq!(
            out.as_deref(),
            Some(&b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n"[..])
        );
        assert_eq!(framer.pending(), 0);
        assert_eq!(parse_events(&out.unwrap()).len(), 2);
    }
}
