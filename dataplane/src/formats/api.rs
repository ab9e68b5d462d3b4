//! The vocabulary every layer shares: which API a caller speaks ([`ApiFormat`]), which
//! endpoint it called ([`Ingress`]), and which wire format a provider speaks ([`Family`]).

use drover_proto::model::ProviderKind;

/// The API family a caller speaks, which decides the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
}

/// The endpoint a caller called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

impl Ingress {
    pub fn format(self) -> ApiFormat {
        match self {
            Ingress::Messages | Ingress::CountTokens => ApiFormat::Anthropic,
            _ => ApiFormat::OpenAi,
        }
    }

    pub fn can_stream(self) -> bool {
        !matches!(self, Ingress::Embeddings | Ingress::CountTokens)
    }

    /// Whether answers to this ingress may be cached.
    pub fn cacheable(self) -> bool {
        matches!(
            self,
            Ingress::ChatCompletions | Ingress::Messages | Ingress::Completions | Ingress::Embeddings
        )
    }
}

/// The wire format family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// OpenAI, OpenAI-compatible hosts and Azure OpenAI.
    OpenAi,
    Anthropic,
    Gemini,
}

impl Family {
    pub fn of(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible | ProviderKind::Azure => Family::OpenAi,
            ProviderKind::Anthropic => Family::Anthropic,
            ProviderKind::Gemini => Family::Gemini,
        }
    }
}
