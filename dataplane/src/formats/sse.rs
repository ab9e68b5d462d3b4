//! Server-sent events: framing, parsing and writing.
//!
//! [`SseFramer`] cuts an arbitrary byte stream at event boundaries, so that only whole
//! events are forwarded and an error event can always be appended cleanly; it bounds the size
//! of one event, and examines every byte once however the stream is chunked.
//! [`split_events`] turns whole events into [`SseEvent`]s by the SSE grammar, with the bytes
//! each occupies; [`write_event`] writes one.

use bytes::{Bytes, BytesMut};

/// Default largest event: 16 MiB.
pub const DEFAULT_MAX_EVENT: usize = 16 << 20;

/// Splits a byte stream into runs of complete SSE events, each at most `max_event` bytes.
#[derive(Debug)]
pub struct SseFramer {
    /// Bytes after the last event boundary seen: the start of an unfinished event.
    tail: BytesMut,
    /// Leading bytes of `tail` already examined (none of them ends a boundary), so that a
    /// long event is scanned once, not once per chunk.
    scanned: usize,
    max_event: usize,
    /// Bytes examined for boundaries so far (linear in the bytes pushed).
    examined: u64,
    /// An event was too large: the stream cannot be framed any further.
    failed: bool,
}

impl Default for SseFramer {
    fn default() -> Self {
        SseFramer::new(DEFAULT_MAX_EVENT)
    }
}

/// An event longer than the limit. Carries the whole events that came before it in the same push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stream event is larger than {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
    /// Complete events before the one that is too large, to be relayed before the error.
    pub before: Option<Bytes>,
}

/// Whether `buf[..end]` ends with an event boundary (a blank line: `\n\n`, `\r\n\r\n` or
/// `\r\r`). Looks at most four bytes back, so a boundary split across chunks is found once
/// its last byte arrives.
fn boundary_at(buf: &[u8], end: usize) -> bool {
    if end < 2 {
        return false;
    }
    match (buf[end - 2], buf[end - 1]) {
        (b'\n', b'\n') | (b'\r', b'\r') => true,
        (b'\r', b'\n') => end >= 4 && buf[end - 3] == b'\n' && buf[end - 4] == b'\r',
        _ => false,
    }
}

/// Scans `buf` from `from` (bytes before it were examined already) for event boundaries.
/// Returns the end of the last one, or the end of the last whole event before one that
/// grows past `max` (with `Err`). `buf` starts at the start of an event.
fn scan(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, Option<usize>> {
    let mut last = None;
    let mut event_start = 0;
    let mut i = from;
    while let Some(offset) = buf[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
        let end = i + offset + 1;
        if end - event_start > max {
            return Err(last);
        }
        if boundary_at(buf, end) {
            last = Some(end);
            event_start = end;
        }
        i = end;
    }
    if buf.len() - event_start > max {
        return Err(last);
    }
    Ok(last)
}

impl SseFramer {
    /// A framer that refuses events longer than `max_event` bytes (at least 1).
    pub fn new(max_event: usize) -> Self {
        SseFramer {
            tail: BytesMut::new(),
            scanned: 0,
            max_event: max_event.max(1),
            examined: 0,
            failed: false,
        }
    }

    /// Feeds a chunk; returns the complete events it finishes, if any. An event longer than
    /// the limit is an error, and so is every push after it.
    pub fn push(&mut self, chunk: Bytes) -> Result<Option<Bytes>, EventTooLarge> {
        let limit = self.max_event;
        if self.failed {
            return Err(EventTooLarge { limit, before: None });
        }
        if self.tail.is_empty() {
            // Nothing held back: cut the chunk itself, without copying its whole events.
            self.examined += chunk.len() as u64;
            let found = scan(&chunk, 0, limit);
            let end = match found {
                Ok(end) => end,
                Err(before) => return Err(self.fail(before.map(|end| chunk.slice(..end)))),
            };
            return Ok(match end {
                Some(end) if end == chunk.len() => Some(chunk),
                Some(end) => {
                    self.tail.extend_from_slice(&chunk[end..]);
                    self.scanned = self.tail.len();
                    Some(chunk.slice(..end))
                }
                None => {
                    self.tail.extend_from_slice(&chunk);
                    self.scanned = self.tail.len();
                    None
                }
            });
        }
        self.tail.extend_from_slice(&chunk);
        self.examined += (self.tail.len() - self.scanned) as u64;
        let found = scan(&self.tail, self.scanned, limit);
        self.scanned = self.tail.len();
        match found {
            Ok(None) => Ok(None),
            Ok(Some(end)) => {
                // The rest was examined already and holds no boundary.
                self.scanned = self.tail.len() - end;
                Ok(Some(self.tail.split_to(end).freeze()))
            }
            Err(before) => {
                let before = before.map(|end| self.tail.split_to(end).freeze());
                Err(self.fail(before))
            }
        }
    }

    fn fail(&mut self, before: Option<Bytes>) -> EventTooLarge {
        self.failed = true;
        self.tail = BytesMut::new();
        self.scanned = 0;
        EventTooLarge {
            limit: self.max_event,
            before,
        }
    }

    /// Bytes of an unfinished event held back.
    pub fn pending(&self) -> usize {
        self.tail.len()
    }

    /// Bytes examined for event boundaries so far: each byte pushed is examined once.
    pub fn examined(&self) -> u64 {
        self.examined
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
    split_events(events).map(|(_, event)| event).collect()
}

/// The events in `buf` with the byte range each occupies (its lines and the blank line that
/// ends it), in order. Follows the SSE grammar: lines end with `\r\n`, `\n` or `\r`; `data:`
/// with or without one space; several `data` lines joined with `\n`; comment lines (`:`)
/// and unknown fields ignored. Bytes that are no event (comments alone, stray blank lines)
/// lie between the ranges.
pub fn split_events(buf: &[u8]) -> SplitEvents<'_> {
    SplitEvents { buf, pos: 0 }
}

/// Iterator of [`split_events`].
pub struct SplitEvents<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl SplitEvents<'_> {
    /// The next line (without its end) and moves past it.
    fn line(&mut self) -> &[u8] {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
                self.pos += i + if crlf { 2 } else { 1 };
                &rest[..i]
            }
            None => {
                self.pos = self.buf.len();
                rest
            }
        }
    }
}

impl Iterator for SplitEvents<'_> {
    type Item = (std::ops::Range<usize>, SseEvent);

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.buf.len() {
            let start = self.pos;
            let mut event = SseEvent::default();
            let mut has_data = false;
            while self.pos < self.buf.len() {
                let line = self.line();
                if line.is_empty() {
                    break;
                }
                if line[0] == b':' {
                    continue;
                }
                let (field, value) = match line.iter().position(|&b| b == b':') {
                    Some(i) => {
                        let value = &line[i + 1..];
                        (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &b""[..]),
                };
                match field {
                    b"event" => event.event = Some(String::from_utf8_lossy(value).into_owned()),
                    b"data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(&String::from_utf8_lossy(value));
                        has_data = true;
                    }
                    _ => {}
                }
            }
            if has_data || event.event.is_some() {
                return Some((start..self.pos, event));
            }
        }
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"a\":1}\n\ndata: {\"b\":\"x\\n\"}\r\n\r\n: keepalive\n\nevent: e\ndata: {\"c\":3}\n\ndata: [DONE]\n\n";

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool, usize) {
        let mut framer = SseFramer::default();
        let mut out = Vec::new();
        let mut done = false;
        for c in chunks {
            if let Some(events) = framer.push(Bytes::copy_from_slice(c)).unwrap() {
                assert!(boundary_at(&events, events.len()), "emitted a partial event");
                done |= parse_events(&events).iter().any(|e| e.data == "[DONE]");
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
    fn a_long_event_is_examined_once_however_it_is_chunked() {
        const LINE: usize = 8 << 20;
        const CHUNK: usize = 64 << 10;
        let mut framer = SseFramer::default();
        assert_eq!(framer.push(Bytes::from_static(b"data: ")).unwrap(), None);
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        for _ in 0..LINE / CHUNK {
            assert_eq!(framer.push(chunk.clone()).unwrap(), None);
        }
        // The blank line that ends it, split across chunks as `\r\n\r` + `\n`.
        assert_eq!(framer.push(Bytes::from_static(b"\r\n\r")).unwrap(), None);
        let event = framer.push(Bytes::from_static(b"\n")).unwrap().unwrap();
        assert_eq!(event.len(), 6 + LINE + 4);
        assert_eq!(framer.pending(), 0);
        let examined = framer.examined();
        assert!(
            examined <= 2 * (LINE as u64),
            "examined {examined} bytes for an event of {LINE}: scanning is not linear"
        );
    }

    #[test]
    fn an_event_over_the_limit_is_an_error_after_the_events_before_it() {
        const STREAM: &[u8] = b"data: 1\n\ndata: 22\n\ndata: this one is far too long\n\ndata: 4\n\n";
        let limit = 12;
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let mut framer = SseFramer::new(limit);
                let mut out = Vec::new();
                let mut error = None;
                for part in [&STREAM[..i], &STREAM[i..j], &STREAM[j..]] {
                    match framer.push(Bytes::copy_from_slice(part)) {
                        Ok(events) => out.extend_from_slice(&events.unwrap_or_default()),
                        Err(e) => {
                            out.extend_from_slice(&e.before.clone().unwrap_or_default());
                            error.get_or_insert(e);
                        }
                    }
                }
                assert_eq!(out, b"data: 1\n\ndata: 22\n\n", "split at {i},{j}");
                assert_eq!(error.map(|e| e.limit), Some(limit), "split at {i},{j}");
                assert_eq!(framer.pending(), 0, "nothing is held after the error");
            }
        }
        let mut exact = SseFramer::new(12);
        assert!(
            exact
                .push(Bytes::from_static(b"data: 1234\n\n"))
                .unwrap()
                .is_some()
        );
        let mut endless = SseFramer::new(1024);
        let chunk = Bytes::from(vec![b'y'; 100]);
        let pushed = (0..20).map(|_| endless.push(chunk.clone())).find(Result::is_err);
        assert!(pushed.is_some(), "an endless line ends at the limit");
        assert_eq!(endless.pending(), 0, "and what it held is released");
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
                if let Some(events) = framer.push(Bytes::copy_from_slice(part)).unwrap() {
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
}

#[cfg(test)]
mod crlf_tests {
    use super::*;

    #[test]
    fn crlf_framed_events_are_whole() {
        let mut framer = SseFramer::default();
        let out = framer
            .push(Bytes::from_static(
                b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n",
            ))
            .unwrap();
        assert_eq!(
            out.as_deref(),
            Some(&b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n"[..])
        );
        assert_eq!(framer.pending(), 0);
        assert_eq!(parse_events(&out.unwrap()).len(), 2);
    }

    #[test]
    fn events_and_their_ranges_by_the_grammar() {
        let buf = b": hello\n\ndata:a\r\ndata: b\r\n\r\nevent: x\rdata:  c\r\r\n\nid: 7\ndata\n\n";
        let got: Vec<_> = split_events(buf).collect();
        let want = [
            (9..28, None, "a\nb"),
            (28..48, Some("x"), " c"),
            (49..61, None, ""),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((range, event), (r, name, data)) in got.iter().zip(want) {
            assert_eq!(*range, r);
            assert_eq!(event.event.as_deref(), name);
            assert_eq!(event.data, data);
        }
        // Each range ends where the next starts, or with bytes that are no event between.
        assert_eq!(&buf[got[0].0.clone()], b"data:a\r\ndata: b\r\n\r\n");
    }
}
