//! Google Gemini wire format (Generative Language API `generateContent` and
//! `streamGenerateContent?alt=sse`), translated to and from the canonical model in [`ir`].
//!
//! Gemini is only ever a provider: this module encodes requests and decodes answers, errors
//! and streams. The model travels in the URL (`/models/{model}:generateContent`), so the
//! request body never names it. URLs, headers and transport are not owned here.
//!
//! Choices that are not one-to-one:
//! * Tool results: Gemini's `functionResponse` names the function, the canonical model only
//!   has the call id, so the name is found on the matching tool call earlier in the
//!   conversation (the id itself if there is none). Its `response` must be an object: result
//!   text that is a JSON object is sent as is, other text as `{"content": TEXT}`; an error
//!   result becomes `{"error": TEXT_OR_OBJECT}` (Gemini's documented key for failures).
//!   Images in a tool result follow their `functionResponse` as parts of the same turn.
//! * Tool schemas are Gemini's OpenAPI subset, which rejects keywords
//!   such as `additionalProperties` or `$schema`: those are stripped recursively (property
//!   names are left alone). This changes no meaning Gemini could enforce, so nothing is
//!   reported. A function without parameters (an object schema with no properties) is
//!   declared without `parameters`, which Gemini requires.
//! * Structured output goes as `responseJsonSchema` (Gemini's JSON Schema subset, which takes
//!   `$defs`/`$ref`, `anyOf` and numeric and array bounds; a list of types becomes `anyOf`);
//!   keywords outside it are
//!   removed, and those that constrain (`minLength`, `pattern`, `const`, `allOf`, …) are named
//!   in `x-drover-dropped` as `response_format.schema.<keyword>`.
//! * Thinking from earlier turns is not sent back (Gemini's thought parts need Gemini's own
//!   `thoughtSignature`); it is reported as `thinking`. Gemini 3 refuses replayed function
//!   calls without a signature, so the first `functionCall` of every model turn carries the
//!   documented `skip_thought_signature_validator` placeholder.
//! * Consecutive messages of the same role are merged into one `contents` entry; empty text
//!   parts (which Gemini rejects) are skipped.
//! * Answers: a `functionCall` without an `id` gets `call_{responseId}_{n}` (`n` counting
//!   calls in the answer), so ids are unique across turns and stable for a given answer.
//!   `promptTokenCount` (plus `toolUsePromptTokenCount`) is the input, which already counts
//!   cached tokens; `candidatesTokenCount + thoughtsTokenCount` is the output. Parts other
//!   than text, thoughts and function calls (generated images, code execution) are ignored.
//!
//! [`ir`]: crate::formats::ir

mod error;
mod request;
mod response;
mod stream;

pub use error::decode_error;
pub use request::encode_request;
pub use response::decode_response;
pub use stream::StreamDecoder;

use serde::Deserialize;
use serde_json::Value;

use crate::formats::ir::Usage;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GenerateContentResponse {
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
    model_version: Option<String>,
    response_id: Option<String>,
    /// An error reported inside a stream.
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Content {
    parts: Vec<ResponsePart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ResponsePart {
    text: Option<String>,
    thought: bool,
    thought_signature: Option<String>,
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
    cached_content_token_count: u64,
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    fn to_ir(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_token_count + self.tool_use_prompt_token_count,
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
            cached_input_tokens: self.cached_content_token_count,
            cache_creation_tokens: 0,
            reasoning_tokens: self.thoughts_token_count,
        }
    }
}

/// Names tool calls that came without an id: `call_{base}_{n}`.
#[derive(Debug, Default)]
struct CallIds {
    base: String,
    next: usize,
}

impl CallIds {
    /// `base` from the response id (only `[A-Za-z0-9_-]` kept, so any format accepts it), or
    /// random when there is none.
    fn new(response_id: Option<&str>) -> Self {
        let base: String = response_id
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect();
        let base = if base.is_empty() {
            format!("{:016x}", rand::random::<u64>())
        } else {
            base
        };
        CallIds { base, next: 0 }
    }

    fn id_for(&mut self, call: &FunctionCall) -> String {
        let n = self.next;
        self.next += 1;
        match &call.id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => format!("call_{}_{n}", self.base),
        }
    }
}
