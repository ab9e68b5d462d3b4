//! Wire formats the data plane speaks: request bodies parsed shallowly, the codecs of each
//! format (to and from the canonical model in [`ir`]), error shapes, SSE framing, and what
//! the meter reads from relayed streams. Owns no I/O; every function here is pure and tested
//! table-driven.

mod api;

pub mod anthropic;
pub mod gemini;
pub mod ir;
pub mod json;
pub mod openai;
pub mod ratelimit;
pub mod responses;
pub mod sse;
pub mod structured;
pub mod tap;
#[cfg(test)]
pub(crate) mod test_support;

pub use api::{ApiFormat, Family, Ingress};

use bytes::BytesMut;

use ir::{DecodeError, StreamEvent, Usage};
use sse::SseEvent;

/// A provider's stream, decoded into canonical events. Feed every event in order.
pub trait StreamDecode: Send {
    fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, DecodeError>;
    /// The upstream ended: what only the end tells (Gemini has no terminal event).
    fn finish(&mut self) -> Vec<StreamEvent> {
        Vec::new()
    }
    /// The provider's token counts seen so far.
    fn usage(&self) -> Option<Usage>;
}

/// Canonical stream events, written in a caller's format.
pub trait StreamEncode: Send {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut);
}

impl StreamDecode for openai::StreamDecoder {
    fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, DecodeError> {
        openai::StreamDecoder::decode(self, event)
    }
    fn usage(&self) -> Option<Usage> {
        openai::StreamDecoder::usage(self)
    }
}

impl StreamDecode for anthropic::StreamDecoder {
    fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, DecodeError> {
        anthropic::StreamDecoder::decode(self, event)
    }
    fn usage(&self) -> Option<Usage> {
        anthropic::StreamDecoder::usage(self)
    }
}

impl StreamDecode for gemini::StreamDecoder {
    fn decode(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, DecodeError> {
        gemini::StreamDecoder::decode(self, event)
    }
    fn finish(&mut self) -> Vec<StreamEvent> {
        gemini::StreamDecoder::finish(self)
    }
    fn usage(&self) -> Option<Usage> {
        gemini::StreamDecoder::usage(self)
    }
}

impl StreamEncode for openai::StreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        openai::StreamEncoder::encode(self, event, out);
    }
}

impl StreamEncode for anthropic::StreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        anthropic::StreamEncoder::encode(self, event, out);
    }
}

impl StreamEncode for responses::StreamEncoder {
    fn encode(&mut self, event: &StreamEvent, out: &mut BytesMut) {
        responses::StreamEncoder::encode(self, event, out);
    }
}
