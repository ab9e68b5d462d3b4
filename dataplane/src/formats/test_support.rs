//! Test helpers the codecs share: canonical conversations, SSE events, and a stream decoded
//! from the pieces its bytes arrive in.

use bytes::Bytes;
use serde_json::{Value, json};

use super::StreamDecode;
use super::ir::{Message, Part, Role, StreamEvent};
use super::sse::{SseEvent, SseFramer, parse_events};

pub(crate) fn text(t: &str) -> Part {
    Part::Text {
        text: t.into(),
        cache_control: None,
    }
}

pub(crate) fn user(parts: Vec<Part>) -> Message {
    Message {
        role: Role::User,
        parts,
    }
}

pub(crate) fn assistant(parts: Vec<Part>) -> Message {
    Message {
        role: Role::Assistant,
        parts,
    }
}

pub(crate) fn ephemeral() -> Option<Value> {
    Some(json!({"type": "ephemeral"}))
}

/// An unnamed event carrying `data`.
pub(crate) fn data_event(data: &str) -> SseEvent {
    SseEvent {
        event: None,
        data: data.into(),
    }
}

/// Feeds `pieces` in order through the SSE framer and parser into `decoder`: the events it
/// decoded, and the framer (holding what did not make a whole event).
pub(crate) fn decode_pieces(
    decoder: &mut impl StreamDecode,
    pieces: &[&[u8]],
) -> (Vec<StreamEvent>, SseFramer) {
    let mut framer = SseFramer::default();
    let mut events = Vec::new();
    for piece in pieces {
        if let Some(whole) = framer.push(Bytes::copy_from_slice(piece)).unwrap() {
            for event in parse_events(&whole) {
                events.extend(decoder.decode(&event).unwrap());
            }
        }
    }
    (events, framer)
}
