//! Google Gemini (Generative Language API): `x-goog-api-key`, and the model in the path:
//! `{base}/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse` to stream.

use http::HeaderName;

use super::Op;

pub fn auth(key: &str) -> (HeaderName, String) {
    (HeaderName::from_static("x-goog-api-key"), key.to_owned())
}

pub fn path(op: Op, model: &str, stream: bool) -> Option<String> {
    match op {
        Op::Generate if stream => Some(format!("/models/{model}:streamGenerateContent?alt=sse")),
        Op::Generate => Some(format!("/models/{model}:generateContent")),
        _ => None,
    }
}
