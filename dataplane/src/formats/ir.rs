//! The canonical chat model that every wire format translates through.
//!
//! Requests, responses, stream events and errors of OpenAI chat, Anthropic messages and
//! Gemini are decoded into these types and encoded out of them. It is a superset: whatever
//! one format can say and another cannot (thinking blocks, `cache_control`, logprobs…) has a
//! place here, and an encoder that cannot express something records it in [`Dropped`]
//! instead of losing it silently. Same-format traffic never comes here: it takes the
//! shallow hot path in `openai.rs`.

use serde_json::Value;

/// A chat request, whatever format it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The model as the caller named it (alias or `provider/model`); encoders get the target model separately.
    pub model: String,
    /// System prompt blocks, in order. OpenAI `system`/`developer` messages land here.
    pub system: Vec<SystemBlock>,
    /// The conversation, in order. Consecutive messages of the same role are allowed.
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// OpenAI `parallel_tool_calls`; Anthropic `tool_choice.disable_parallel_tool_use` (inverted).
    pub parallel_tool_calls: Option<bool>,
    /// OpenAI `max_completion_tokens` or `max_tokens`; Anthropic `max_tokens`; Gemini `maxOutputTokens`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Anthropic and Gemini only.
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// The caller asked for usage in the stream (OpenAI `stream_options.include_usage`).
    pub include_usage: bool,
    pub response_format: Option<ResponseFormat>,
    /// Extended thinking (Anthropic `thinking`, Gemini `thinkingConfig`).
    pub thinking: Option<Thinking>,
    /// OpenAI `reasoning_effort` (`low`, `medium`, `high`, …).
    pub reasoning_effort: Option<String>,
    /// End-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// Top-level request fields this model has no place for, with their raw values, in
    /// request order. An encoder for the same family may pass them on; any other reports
    /// them as dropped.
    pub extra: Vec<(String, Value)>,
}

/// One block of the system prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemBlock {
    pub text: String,
    /// Anthropic prompt-caching marker, kept as given (e.g. `{"type":"ephemeral"}`).
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn. Tool results travel in `User` messages (as in Anthropic's format); OpenAI's
/// `tool` messages are decoded into them and encoded back out of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// A piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text {
        text: String,
        cache_control: Option<Value>,
    },
    Image {
        source: ImageSource,
        cache_control: Option<Value>,
    },
    /// A tool call made by the assistant. `arguments` is JSON text, as OpenAI carries it.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result of a tool call, sent back by the user side. `content` holds text and images.
    ToolResult {
        call_id: String,
        content: Vec<Part>,
        is_error: bool,
        cache_control: Option<Value>,
    },
    /// Model reasoning (Anthropic `thinking`). The signature must come back unchanged in later turns.
    Thinking { text: String, signature: Option<String> },
    /// Anthropic `redacted_thinking`: opaque, returned as is.
    RedactedThinking { data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An http(s) URL.
    Url(String),
    /// Inline bytes, base64-encoded (a `data:` URL is decoded into this).
    Base64 { media_type: String, data: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`).
    Required,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Thinking {
    /// Token budget for thinking; `None`: the provider's default.
    pub budget_tokens: Option<u32>,
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StopReason {
    #[default]
    EndTurn,
    MaxTokens,
    /// A stop sequence matched (which one, if the provider says).
    StopSequence(Option<String>),
    ToolUse,
    ContentFilter,
    /// Anthropic `pause_turn` / `refusal` and other provider-specific reasons, as given.
    Other(String),
}

/// Token counts. `input_tokens` counts every prompt token, cached or not; the cached and
/// cache-creation counts are parts of it (OpenAI's convention; Anthropic's `input_tokens`
/// excludes them and is converted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_tokens: u64,
    /// Part of `output_tokens` spent reasoning, where reported.
    pub reasoning_tokens: u64,
}

/// A complete (non-stream) answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatResponse {
    pub id: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// Text, tool calls and thinking, in order.
    pub parts: Vec<Part>,
    pub stop: StopReason,
    pub usage: Usage,
    /// Unix seconds, if the provider said.
    pub created: Option<i64>,
}

/// What starts a content block in a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockKind {
    Text,
    Thinking,
    RedactedThinking { data: String },
    ToolCall { id: String, name: String },
}

/// An increment inside a content block.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    Thinking(String),
    Signature(String),
    /// A fragment of a tool call's JSON arguments.
    ToolArguments(String),
}

/// One event of a streamed answer, in the order a decoder produces them:
/// `Start`, then blocks (`BlockStart`, `Delta`*, `BlockStop`) with indexes 0, 1, 2…, then
/// `Finish`, `Usage` (either order, usage possibly absent), then `Done`.
///
/// Blocks never interleave: a decoder stops a block before it starts the next one. A
/// decoder whose source may interleave (OpenAI streams parallel tool calls by index) keeps
/// this order by stopping the open block when another begins and holding back deltas for
/// a block it already stopped until it can emit them in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Start {
        id: String,
        model: String,
    },
    BlockStart {
        index: usize,
        kind: BlockKind,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    Finish {
        stop: StopReason,
    },
    Usage(Usage),
    /// The provider reported an error inside the stream; nothing follows.
    Error(ErrorInfo),
    /// The stream completed normally.
    Done,
}

/// Kinds of failure every format can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RequestTooLarge,
    RateLimit,
    /// The provider is overloaded (Anthropic 529 `overloaded_error`).
    Overloaded,
    Server,
    Timeout,
}

/// An error in format-neutral terms. `status` is the HTTP status the caller should get.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorInfo {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
}

/// Features an encoder could not express in its target format, by name (e.g. `logprobs`,
/// `thinking`, `cache_control`, `top_k`). Reported to the caller in `x-drover-dropped`;
/// a caller that requires strict translation gets a 400 instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped(Vec<String>);

/// Features a [`Dropped`] names at most; past them it ends with `...`.
const MAX_DROPPED: usize = 32;
/// Characters of one feature's name kept.
const MAX_FEATURE_LEN: usize = 96;

impl Dropped {
    /// Records a feature (once). Names can come from the caller (extra fields, schema keywords),
    /// so they are kept fit for a header: visible ASCII without commas (others become `_`), at
    /// most [`MAX_FEATURE_LEN`] characters, and at most [`MAX_DROPPED`] of them.
    pub fn add(&mut self, feature: impl Into<String>) {
        let feature = feature.into();
        let fits =
            feature.len() <= MAX_FEATURE_LEN && feature.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        let feature = if fits {
            feature
        } else {
            feature
                .chars()
                .take(MAX_FEATURE_LEN)
                .map(|c| if c.is_ascii_graphic() && c != ',' { c } else { '_' })
                .collect()
        };
        if self.0.contains(&feature) {
            return;
        }
        if self.0.len() < MAX_DROPPED {
            self.0.push(feature);
        } else if self.0.len() == MAX_DROPPED {
            self.0.push("...".to_owned());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Names what begins with `from` (a whole dotted segment) by `to` instead: a feature named
    /// as the caller's format spells it.
    pub fn rename(&mut self, from: &str, to: &str) {
        for name in &mut self.0 {
            if let Some(rest) = name.strip_prefix(from)
                && (rest.is_empty() || rest.starts_with('.'))
            {
                *name = format!("{to}{rest}");
            }
        }
    }

    /// Comma-separated, for the response header.
    pub fn header_value(&self) -> String {
        self.0.join(",")
    }
}

/// A provider answer that could not be decoded. The message is safe to show a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

#[cfg(test)]
mod tests {
    use super::Dropped;

    #[test]
    fn dropped_features_are_renamed_by_whole_segments() {
        let mut d = Dropped::default();
        for name in [
            "response_format.strict",
            "response_format",
            "response_formats",
            "top_k",
        ] {
            d.add(name);
        }
        d.rename("response_format", "text.format");
        assert_eq!(
            d.header_value(),
            "text.format.strict,text.format,response_formats,top_k"
        );
    }

    #[test]
    fn dropped_names_stay_fit_for_a_header_and_bounded() {
        let mut d = Dropped::default();
        d.add("response_format.schema.dé,fs x");
        d.add("a".repeat(500));
        for i in 0..100 {
            d.add(format!("k{i}"));
        }
        let names = d.names();
        assert_eq!(names[0], "response_format.schema.d__fs_x");
        assert_eq!(names[1].len(), 96);
        assert_eq!(names.len(), 33);
        assert_eq!(names.last().map(String::as_str), Some("..."));
        assert!(http::HeaderValue::from_str(&d.header_value()).is_ok());
    }
}
