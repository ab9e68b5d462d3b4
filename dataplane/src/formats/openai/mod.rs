//! OpenAI wire format: Chat Completions translated to and from the canonical model ([`ir`]),
//! the usage object ([`usage`]) and stream metering ([`tap`]).
//!
//! Same-format traffic never comes to the Chat Completions codec (it takes the shallow path).
//! The codec owns the typed wire shapes of `/v1/chat/completions`: requests (`request`),
//! whole answers (`response`), error bodies (`error`) and `chat.completion.chunk` streams
//! (`stream`), each decoded into [`ir`] and encoded out of it. Whatever the OpenAI shape cannot
//! carry is recorded in [`ir::Dropped`] by name.
//!
//! Thinking travels the way OpenAI-compatible clients and gateways carry it:
//! `reasoning_content` (text) and `thinking_blocks` (with signatures, and redacted blocks),
//! so an OpenAI caller that sends an assistant turn back keeps its signatures intact.
//!
//! Streams: OpenAI may send the argument fragments of parallel tool calls interleaved by
//! `index`; [`StreamDecoder`] keeps the IR rule that blocks never interleave (see
//! [`ir::StreamEvent`]) by streaming the oldest open block live and holding the others
//! back until it is complete.
//!
//! [`ir`]: crate::formats::ir
//! [`ir::Dropped`]: crate::formats::ir::Dropped
//! [`ir::StreamEvent`]: crate::formats::ir::StreamEvent

mod error;
mod request;
mod response;
mod stream;
pub mod tap;
pub mod usage;

pub use error::{decode_error, encode_error, error_body, error_event, responses_error_event};
pub(crate) use request::image_source;
pub use request::{decode_request, decode_request_reporting, encode_request};
pub use response::{decode_response, encode_response};
pub use stream::{StreamDecoder, StreamEncoder};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::formats::ir::Usage;

/// One entry of `thinking_blocks`, in requests, responses and stream deltas.
#[derive(Deserialize)]
struct WireThinkingBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Serialize)]
struct OutToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunctionCall<'a>,
}

#[derive(Serialize)]
struct OutFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// A tool call in a response, or a fragment of one in a stream delta.
#[derive(Deserialize)]
struct InToolCall {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<InFunction>,
}

#[derive(Deserialize)]
struct InFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutThinkingBlock<'a> {
    Thinking {
        thinking: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<&'a str>,
    },
    RedactedThinking {
        data: &'a str,
    },
}

#[derive(Serialize)]
struct OutUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: OutPromptDetails,
    completion_tokens_details: OutCompletionDetails,
}

impl From<&Usage> for OutUsage {
    fn from(u: &Usage) -> Self {
        OutUsage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.input_tokens.saturating_add(u.output_tokens),
            prompt_tokens_details: OutPromptDetails {
                cached_tokens: u.cached_input_tokens,
            },
            completion_tokens_details: OutCompletionDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

#[derive(Serialize)]
struct OutPromptDetails {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct OutCompletionDetails {
    reasoning_tokens: u64,
}

/// Test helpers the parts of this codec share.
#[cfg(test)]
mod test_support {
    use serde_json::Value;

    use super::decode_request;
    use crate::formats::ir::{ChatRequest, Part};

    pub(super) fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    pub(super) fn decode(body: Value) -> ChatRequest {
        decode_request(body.to_string().as_bytes()).unwrap()
    }
}
