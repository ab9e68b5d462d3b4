//! What the meter reads from a stream relayed as it is (same format in and out): the
//! provider's token counts, the text relayed, whether the terminal event went by, and which
//! event the gateway removes (the usage-only chunk it asked for and the caller did not).
//!
//! Events are split by the SSE grammar ([`split_events`]) and each is read by its format's
//! codec ([`openai::tap`], [`anthropic::EventTap`]) as JSON, never by byte patterns: the
//! outcome does not depend on whitespace, key order, escapes, line ends or how the bytes
//! were cut.

use bytes::{Bytes, BytesMut};

use crate::formats::ir::Usage;
use crate::formats::sse::split_events;
use crate::formats::{anthropic, openai};

/// Which stream format is relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// OpenAI chat or completions chunks, ended by `data: [DONE]`.
    OpenAiChunks,
    /// Anthropic message events, ended by `message_stop` (or `error`).
    Anthropic,
    /// OpenAI Responses events, ended by `response.completed` and its kin (or `error`).
    Responses,
}

/// What one event told the meter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Bytes of text, thinking and tool arguments it carried.
    pub chars: usize,
    /// It ends the stream.
    pub terminal: bool,
    /// An OpenAI chunk with usage and no choices.
    pub usage_only: bool,
}

#[derive(Debug)]
enum Reader {
    OpenAi(openai::tap::ChunkTap),
    Anthropic(anthropic::EventTap),
    Responses(openai::tap::ResponsesTap),
}

/// Watches a relayed stream.
#[derive(Debug)]
pub struct StreamTap {
    reader: Reader,
    strip_usage_chunk: bool,
    completed: bool,
    content_chars: usize,
}

impl StreamTap {
    /// `strip_usage_chunk`: the gateway asked an OpenAI provider for the usage chunk that the
    /// caller did not.
    pub fn new(kind: StreamKind, strip_usage_chunk: bool) -> Self {
        StreamTap {
            reader: match kind {
                StreamKind::OpenAiChunks => Reader::OpenAi(openai::tap::ChunkTap::default()),
                StreamKind::Anthropic => Reader::Anthropic(anthropic::EventTap::default()),
                StreamKind::Responses => Reader::Responses(openai::tap::ResponsesTap::default()),
            },
            strip_usage_chunk,
            completed: false,
            content_chars: 0,
        }
    }

    /// Observes whole events; returns them, without the usage-only chunk when it is to be
    /// stripped. Everything else goes out byte for byte.
    pub fn observe(&mut self, events: Bytes) -> Bytes {
        let mut kept: Option<BytesMut> = None;
        let mut copied = 0;
        for (range, event) in split_events(&events) {
            let seen = match &mut self.reader {
                Reader::OpenAi(r) => r.observe(&event),
                Reader::Anthropic(r) => r.observe(&event),
                Reader::Responses(r) => r.observe(&event),
            };
            self.content_chars = self.content_chars.saturating_add(seen.chars);
            self.completed |= seen.terminal;
            if seen.usage_only && self.strip_usage_chunk {
                let buf = kept.get_or_insert_with(|| BytesMut::with_capacity(events.len()));
                buf.extend_from_slice(&events[copied..range.start]);
                copied = range.end;
            }
        }
        match kept {
            Some(mut buf) => {
                buf.extend_from_slice(&events[copied..]);
                buf.freeze()
            }
            None => events,
        }
    }

    /// The provider's token counts seen so far.
    pub fn usage(&self) -> Option<Usage> {
        match &self.reader {
            Reader::OpenAi(r) => r.usage(),
            Reader::Anthropic(r) => r.usage(),
            Reader::Responses(r) => r.usage(),
        }
    }

    /// For a Responses stream, the `sequence_number` of an event appended to it.
    pub fn next_sequence(&self) -> Option<u64> {
        match &self.reader {
            Reader::Responses(r) => Some(r.next_sequence()),
            Reader::OpenAi(_) | Reader::Anthropic(_) => None,
        }
    }

    /// Bytes of text, thinking and tool arguments relayed so far.
    pub fn content_chars(&self) -> usize {
        self.content_chars
    }

    /// Whether the terminal event went by.
    pub fn completed(&self) -> bool {
        self.completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_stream_usage_is_read_and_stripped_when_asked() {
        let events = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi there\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        );
        let mut tap = StreamTap::new(StreamKind::OpenAiChunks, true);
        let out = tap.observe(events.clone());
        assert_eq!(
            tap.usage().map(|u| (u.input_tokens, u.output_tokens)),
            Some((9, 2))
        );
        assert_eq!(
            &out[..],
            &b"data: {\"choices\":[{\"delta\":{\"content\":\"hi there\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"[..]
        );
        assert_eq!(tap.content_chars(), 8);
        assert!(tap.completed());
        let mut keep = StreamTap::new(StreamKind::OpenAiChunks, false);
        assert_eq!(keep.observe(events.clone()), events);
        assert!(keep.usage().is_some());
    }

    #[test]
    fn spaced_json_is_read_the_same() {
        // As Python servers write it: `json.dumps` puts a space after every `:` and `,`.
        let events = Bytes::from_static(
            b"data: {\"choices\": [{\"delta\": {\"content\": \"hi there\"}}], \"usage\": null}\n\ndata: {\"choices\": [], \"usage\": {\"prompt_tokens\": 9, \"completion_tokens\": 2}}\n\ndata: [DONE]\n\n",
        );
        let mut tap = StreamTap::new(StreamKind::OpenAiChunks, true);
        let out = tap.observe(events);
        assert_eq!(
            tap.usage().map(|u| (u.input_tokens, u.output_tokens)),
            Some((9, 2))
        );
        assert_eq!(
            &out[..],
            &b"data: {\"choices\": [{\"delta\": {\"content\": \"hi there\"}}], \"usage\": null}\n\ndata: [DONE]\n\n"[..]
        );
        assert_eq!(tap.content_chars(), 8);
    }

    #[test]
    fn anthropic_stream_usage_is_cumulative() {
        let mut tap = StreamTap::new(StreamKind::Anthropic, false);
        let events = Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"abcd\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":30}}\n\n",
        );
        assert_eq!(tap.observe(events.clone()), events);
        let u = tap.usage().unwrap();
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens),
            (112, 100, 30)
        );
        assert_eq!(tap.content_chars(), 4);
        assert!(!tap.completed());
    }

    #[test]
    fn responses_completed_event_gives_usage() {
        let mut tap = StreamTap::new(StreamKind::Responses, false);
        tap.observe(Bytes::from_static(
            b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}}\n\n",
        ));
        assert_eq!(
            tap.usage().map(|u| (u.input_tokens, u.output_tokens)),
            Some((5, 6))
        );
        assert!(tap.completed());
    }

    #[test]
    fn an_event_appended_to_a_responses_stream_takes_the_next_number() {
        let mut tap = StreamTap::new(StreamKind::Responses, false);
        assert_eq!(tap.next_sequence(), Some(0));
        tap.observe(Bytes::from_static(
            b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0}\n\n\
              event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"sequence_number\":1}\n\n",
        ));
        assert_eq!(tap.next_sequence(), Some(2));
        // Events without numbers: counted.
        let mut bare = StreamTap::new(StreamKind::Responses, false);
        bare.observe(Bytes::from_static(
            b"event: response.created\ndata: {\"type\":\"response.created\"}\n\ndata: not json\n\n",
        ));
        assert_eq!(bare.next_sequence(), Some(2));
        assert_eq!(
            StreamTap::new(StreamKind::OpenAiChunks, false).next_sequence(),
            None
        );
    }

    #[test]
    fn terminal_events_by_format() {
        let cases: &[(StreamKind, &[u8], bool)] = &[
            (
                StreamKind::Anthropic,
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                true,
            ),
            (
                StreamKind::Anthropic,
                b"event: message_delta\ndata: {}\n\n",
                false,
            ),
            (StreamKind::Anthropic, b"event: error\ndata: {}\n\n", true),
            (
                StreamKind::Anthropic,
                b"data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
                true,
            ),
            (
                StreamKind::Responses,
                b"event: response.completed\ndata: {}\n\n",
                true,
            ),
            (
                StreamKind::Responses,
                b"event: response.output_text.delta\ndata: {}\n\n",
                false,
            ),
            (StreamKind::OpenAiChunks, b"event: message_stop\n\n", false),
            (StreamKind::OpenAiChunks, b"data:[DONE]\r\n\r\n", true),
            (
                StreamKind::OpenAiChunks,
                b"data: {\"text\":\"data: [DONE]\"}\n\n",
                false,
            ),
            (
                StreamKind::OpenAiChunks,
                b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n",
                true,
            ),
            (
                StreamKind::OpenAiChunks,
                b"data: {\"error\":null,\"choices\":[]}\n\n",
                false,
            ),
        ];
        for (kind, events, want) in cases {
            let mut tap = StreamTap::new(*kind, false);
            tap.observe(Bytes::from_static(events));
            assert_eq!(
                tap.completed(),
                *want,
                "{kind:?} {}",
                String::from_utf8_lossy(events)
            );
        }
    }
}
