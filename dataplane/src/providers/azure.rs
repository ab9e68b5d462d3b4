//! Azure OpenAI: OpenAI's wire format at deployment URLs
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`) with an `api-key`
//! header. The target's model is the deployment name. The Responses API lives on Azure's v1
//! surface instead (`/openai/v1/responses`, no `api-version`), with the deployment as the
//! body's `model`.

use http::HeaderName;

use super::Op;

pub fn auth(key: &str) -> (HeaderName, String) {
    (HeaderName::from_static("api-key"), key.to_owned())
}

/// Azure's Responses endpoint, below the resource's base URL.
pub const RESPONSES_PATH: &str = "/openai/v1/responses";

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
