//! Azure OpenAI: OpenAI's wire format at deployment URLs
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`) with an `api-key`
//! header. The target's model is the deployment name.

use http::HeaderName;

use super::Op;

pub fn auth(key: &str) -> (HeaderName, String) {
    (HeaderName::from_static("api-key"), key.to_owned())
}

pub fn path(op: Op, deployment: &str, api_version: &str) -> Option<String> {
    let endpoint = match op {
        Op::Chat => "chat/completions",
        Op::Completions => "completions",
        Op::Embeddings => "embeddings",
        Op::Responses | Op::Messages | Op::CountTokens | Op::Generate => return None,
    };
    Some(format!(
        "/openai/deployments/{deployment}/{endpoint}?api-version={api_version}"
    ))
}
