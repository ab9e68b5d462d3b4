//! Thinking carried across turns of a translated Responses conversation.
//!
//! Anthropic wants each earlier turn's thinking blocks back exactly, with their signatures
//! (redacted ones as their opaque data), when extended thinking runs beside tool use. A
//! Responses client keeps no such thing, but it sends earlier `reasoning` items back as input,
//! and their `encrypted_content` is opaque to it. So a `reasoning` item translated from an
//! Anthropic answer (only those: another provider's signatures would be refused by Anthropic
//! after a failover) carries the blocks there, not encrypted, since Anthropic checks them: `drv1_` and the URL-safe base64 of a JSON list of
//! `{"type":"thinking","thinking","signature"}` and `{"type":"redacted","data"}`. Read back, it
//! restores the blocks in order. Reasoning items from OpenAI itself (another `encrypted_content`,
//! or none) mean nothing to another provider and are dropped, as before.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::formats::ir::Part;

const PREFIX: &str = "drv1_";

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Thinking { thinking: String, signature: String },
    Redacted { data: String },
}

/// The `encrypted_content` that carries `parts`' signed thinking and redacted thinking; `None`
/// when there is none (unsigned thinking cannot be sent back anyway).
pub(super) fn seal<'a>(parts: impl IntoIterator<Item = &'a Part>) -> Option<String> {
    let blocks: Vec<Block> = parts
        .into_iter()
        .filter_map(|p| match p {
            Part::Thinking {
                text,
                signature: Some(signature),
            } if !signature.is_empty() => Some(Block::Thinking {
                thinking: text.clone(),
                signature: signature.clone(),
            }),
            Part::RedactedThinking { data } => Some(Block::Redacted { data: data.clone() }),
            _ => None,
        })
        .collect();
    if blocks.is_empty() {
        return None;
    }
    let json = serde_json::to_vec(&blocks).ok()?;
    Some(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
}

/// The blocks an `encrypted_content` of [`seal`] carries; `None` for any other content.
pub(super) fn open(encrypted: &str) -> Option<Vec<Part>> {
    let json = URL_SAFE_NO_PAD.decode(encrypted.strip_prefix(PREFIX)?).ok()?;
    let blocks: Vec<Block> = serde_json::from_slice(&json).ok()?;
    Some(
        blocks
            .into_iter()
            .map(|b| match b {
                Block::Thinking { thinking, signature } => Part::Thinking {
                    text: thinking,
                    signature: Some(signature),
                },
                Block::Redacted { data } => Part::RedactedThinking { data },
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_and_redacted_thinking_round_trip_and_nothing_else_opens() {
        let parts = vec![
            Part::Thinking {
                text: "Let me think: 2 + 2.".into(),
                signature: Some("EqQBCgIYAhIM1gbcDa9GJwZA2b3h".into()),
            },
            Part::Text {
                text: "ignored".into(),
                cache_control: None,
            },
            Part::RedactedThinking {
                data: "EmwKAhgBEgy3va3pzix/LafPsn4a".into(),
            },
            Part::Thinking {
                text: "unsigned".into(),
                signature: None,
            },
        ];
        let sealed = seal(&parts).unwrap();
        assert!(sealed.starts_with("drv1_"), "{sealed}");
        assert!(
            sealed[5..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(open(&sealed).unwrap(), [parts[0].clone(), parts[2].clone()]);

        assert_eq!(seal(&parts[1..2]), None);
        assert_eq!(seal(&parts[3..]), None, "unsigned thinking is not carried");
        for other in ["gAAAAABo_openai_encrypted", "drv1_!!!", "drv1_", "drv1_e30", ""] {
            assert_eq!(open(other), None, "{other}");
        }
    }
}
