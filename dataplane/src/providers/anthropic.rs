//! Anthropic: `x-api-key` and `anthropic-version` headers, `/messages` below the base URL
//! (e.g. `https://api.anthropic.com/v1`).

use http::request::Builder;
use http::{HeaderName, HeaderValue};

use super::Op;

/// `anthropic-version` sent when the caller did not name one.
pub const DEFAULT_VERSION: &str = "2023-06-01";

pub fn auth(key: &str) -> (HeaderName, String) {
    (HeaderName::from_static("x-api-key"), key.to_owned())
}

pub fn path(op: Op) -> Option<&'static str> {
    match op {
        Op::Messages => Some("/messages"),
        Op::CountTokens => Some("/messages/count_tokens"),
        Op::Chat | Op::Completions | Op::Embeddings | Op::Responses | Op::Generate => None,
    }
}

/// Adds the version header (the caller's, else ours) and the caller's beta flags.
pub fn headers(req: Builder, version: Option<&HeaderValue>, beta: Option<&HeaderValue>) -> Builder {
    let req = req.header(
        "anthropic-version",
        version
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(DEFAULT_VERSION)),
    );
    match beta {
        Some(beta) => req.header("anthropic-beta", beta.clone()),
        None => req,
    }
}
