//! OpenAI and OpenAI-compatible hosts: `Authorization: Bearer`, paths below the base URL.

use http::HeaderName;
use http::header::AUTHORIZATION;

use super::Op;

pub fn auth(key: &str) -> (HeaderName, String) {
    (AUTHORIZATION, format!("Bearer {key}"))
}

pub fn path(op: Op) -> Option<&'static str> {
    match op {
        Op::Chat => Some("/chat/completions"),
        Op::Completions => Some("/completions"),
        Op::Embeddings => Some("/embeddings"),
        Op::Responses => Some("/responses"),
        Op::Messages | Op::CountTokens | Op::Generate => None,
    }
}
