//! OpenAI's `usage` object, read in one place for every path that carries it: whole bodies
//! relayed as they are, relayed streams, and answers translated for another format. The same
//! answer is therefore billed the same whatever format the caller speaks.

use serde::Deserialize;

use crate::formats::ir::Usage;
use crate::formats::json::ShallowBody;

/// Token breakdowns; OpenAI nests them under `*_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// OpenAI's usage in its chat/completions/embeddings form (`prompt_tokens`) and its
/// Responses form (`input_tokens`), with DeepSeek's `prompt_cache_hit_tokens`. Every field
/// may be absent or null.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    output_tokens_details: Option<Details>,
    /// DeepSeek's name for cached prompt tokens.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

impl WireUsage {
    pub fn to_ir(&self) -> Usage {
        let input_details = self.prompt_tokens_details.or(self.input_tokens_details);
        let output_details = self.completion_tokens_details.or(self.output_tokens_details);
        Usage {
            input_tokens: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached_input_tokens: input_details
                .and_then(|d| d.cached_tokens)
                .or(self.prompt_cache_hit_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
            reasoning_tokens: output_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
        }
    }
}

/// The `usage` of an OpenAI-format body (chat, completions, embeddings, responses).
pub fn body_usage(body: &[u8]) -> Option<Usage> {
    if let Some(u) = trailing_usage(body) {
        return Some(u.to_ir());
    }
    let parsed = ShallowBody::parse(body).ok()?;
    let raw = parsed.get("usage")?;
    serde_json::from_str::<WireUsage>(raw.get())
        .ok()
        .map(|u| u.to_ir())
}

/// Providers put `usage` last: parse just that object when the body ends with it, instead of
/// the whole body. `None` when the body is not shaped that way (the caller then parses it
/// all, which also finds a key written with escapes).
fn trailing_usage(body: &[u8]) -> Option<WireUsage> {
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
    let parsed = WireUsage::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_give_their_usage() {
        let chat = br#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        assert_eq!(
            body_usage(chat),
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
            body_usage(responses).map(|u| (u.input_tokens, u.output_tokens, u.cached_input_tokens)),
            Some((7, 3, 1))
        );
        assert_eq!(body_usage(b"{}"), None);
        // A `usage` inside message content is not the usage.
        let tricky = br#"{"choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        assert_eq!(
            body_usage(tricky).map(|u| (u.input_tokens, u.output_tokens)),
            Some((1, 2))
        );
        let usage_first = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4},"id":"x"}"#;
        assert_eq!(
            body_usage(usage_first).map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 4))
        );
        // The key written with an escape, and spaces everywhere.
        let escaped = br#"{ "id" : "x" , "\u0075sage" : { "prompt_tokens" : 6 , "completion_tokens" : 1 } }"#;
        assert_eq!(
            body_usage(escaped).map(|u| (u.input_tokens, u.output_tokens)),
            Some((6, 1))
        );
    }

    #[test]
    fn deepseek_cache_hits_are_cached_tokens() {
        let body = br#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":60,"prompt_cache_miss_tokens":40}}"#;
        assert_eq!(body_usage(body).map(|u| u.cached_input_tokens), Some(60));
        // OpenAI's own field wins where both are present.
        let both = br#"{"usage":{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":10},"prompt_cache_hit_tokens":60}}"#;
        assert_eq!(body_usage(both).map(|u| u.cached_input_tokens), Some(10));
    }
}
