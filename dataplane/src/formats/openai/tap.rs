//! What the meter reads from OpenAI streams relayed as they are: chat and completions chunks
//! ([`ChunkTap`]) and Responses events ([`ResponsesTap`]). Every event is parsed as JSON, so
//! whitespace, key order and escapes make no difference to what is seen.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::usage::WireUsage;
use crate::formats::ir::Usage;
use crate::formats::json::TextLen;
use crate::formats::sse::SseEvent;
use crate::formats::tap::Observed;

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    /// Completions put the text here.
    #[serde(default)]
    text: TextLen,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: TextLen,
    #[serde(default)]
    reasoning_content: TextLen,
    #[serde(default)]
    reasoning: TextLen,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
struct ToolCall {
    #[serde(default)]
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    #[serde(default)]
    arguments: TextLen,
}

/// Chat and completions chunks: `data: [DONE]` or an error chunk ends the stream; a chunk
/// with usage and no choices is the usage-only chunk (`stream_options.include_usage`).
#[derive(Debug, Default)]
pub struct ChunkTap {
    usage: Option<Usage>,
}

impl ChunkTap {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Observed {
                terminal: true,
                ..Observed::default()
            };
        }
        let Ok(chunk) = serde_json::from_str::<Chunk>(data) else {
            return Observed::default();
        };
        let mut chars = 0;
        for choice in chunk.choices.iter().flatten() {
            chars += choice.text.0;
            if let Some(d) = &choice.delta {
                chars += d.content.0 + d.reasoning_content.0 + d.reasoning.0;
                for call in d.tool_calls.iter().flatten() {
                    chars += call.function.as_ref().map_or(0, |f| f.arguments.0);
                }
            }
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some(u.to_ir());
        }
        Observed {
            chars,
            terminal: chunk.error.is_some(),
            usage_only: chunk.usage.is_some() && chunk.choices.as_ref().is_none_or(Vec::is_empty),
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    delta: TextLen,
    #[serde(default)]
    response: Option<ResponseUsage>,
    #[serde(default)]
    sequence_number: Option<u64>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Responses events: `response.completed`, `response.incomplete`, `response.failed` or
/// `error` ends the stream; the final response carries the usage.
#[derive(Debug, Default)]
pub struct ResponsesTap {
    usage: Option<Usage>,
    /// Events seen, and the last `sequence_number` among them.
    events: u64,
    last_sequence: Option<u64>,
}

impl ResponsesTap {
    pub fn observe(&mut self, event: &SseEvent) -> Observed {
        self.events += 1;
        let parsed = serde_json::from_str::<ResponsesEvent<'_>>(&event.data).ok();
        if let Some(n) = parsed.as_ref().and_then(|e| e.sequence_number) {
            self.last_sequence = Some(n);
        }
        let kind = parsed
            .as_ref()
            .and_then(|e| e.kind.as_deref())
            .or(event.event.as_deref());
        let terminal = matches!(
            kind,
            Some("response.completed" | "response.incomplete" | "response.failed" | "error")
        );
        let Some(parsed) = parsed else {
            return Observed {
                terminal,
                ..Observed::default()
            };
        };
        if let Some(u) = parsed.response.and_then(|r| r.usage) {
            self.usage = Some(u.to_ir());
        }
        Observed {
            chars: parsed.delta.0,
            terminal,
            usage_only: false,
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The `sequence_number` an event appended to the stream takes: one past the last one seen
    /// (the count of events when they carried none).
    pub fn next_sequence(&self) -> u64 {
        self.last_sequence.map_or(self.events, |n| n.saturating_add(1))
    }
}
