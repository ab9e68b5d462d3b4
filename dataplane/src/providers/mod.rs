//! Upstream providers: the compiled form of a provider (URLs, auth header), the upstream
//! request each kind expects, and the shared HTTP client that reaches them. What is
//! specific to a kind (URL shapes, auth headers) lives in its own file; resolving credentials
//! in `credential`.
//!
//! Callers never steer the upstream URL: kinds that carry the model in the JSON body only go to
//! fixed paths without a query, and kinds that put it in the path (Azure, Gemini) take only a
//! model that is exactly one safe path segment (`model::is_path_segment_model`), checked again
//! here whatever was checked before.

pub mod anthropic;
pub mod azure;
pub mod credential;
pub mod gemini;
pub mod openai;

use std::time::Duration;

use crate::formats::Family;
use bytes::Bytes;
use drover_proto::model::{Provider, ProviderKind, is_path_segment_model};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Resolves a credential reference (`env:VAR`) on this data plane.
pub type EnvLookup = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An upstream operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// OpenAI `/chat/completions`.
    Chat,
    /// OpenAI `/completions`.
    Completions,
    /// OpenAI `/embeddings`.
    Embeddings,
    /// OpenAI `/responses`.
    Responses,
    /// Anthropic `/messages`.
    Messages,
    /// Anthropic `/messages/count_tokens`.
    CountTokens,
    /// Gemini `models/{model}:generateContent` (or `:streamGenerateContent?alt=sse`).
    Generate,
}

/// A provider ready for requests: credential resolved and URLs prepared, once per snapshot.
#[derive(Debug)]
pub struct ProviderRt {
    pub name: String,
    pub kind: ProviderKind,
    pub family: Family,
    /// Whether Responses API calls go to its own Responses endpoint untouched (else they are
    /// translated to chat completions).
    pub relays_responses: bool,
    /// Why this data plane cannot send requests to it (e.g. its credential cannot be resolved
    /// here); `None` when it can. Never contains the credential.
    pub unavailable: Option<String>,
    /// Base URL without a trailing slash.
    base: String,
    /// The auth header this kind uses, its value marked sensitive.
    auth: Option<(HeaderName, HeaderValue)>,
    /// Azure `api-version`.
    api_version: String,
    /// URLs that do not depend on the model, prepared once.
    fixed: Vec<(Op, Uri)>,
}

/// Why an upstream request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("operation not offered by this provider kind")]
    Unsupported,
    #[error("the model cannot be put into this provider's URL")]
    Model,
    #[error("invalid upstream URL")]
    Url(#[from] http::uri::InvalidUri),
    #[error("invalid upstream request")]
    Http(#[from] http::Error),
}

impl ProviderRt {
    /// Compiles a provider. Never fails: a provider whose credential cannot be resolved on
    /// this data plane (or whose URLs cannot be built) is compiled as unavailable, with why.
    pub fn compile(p: &Provider, env: &EnvLookup, allow: &credential::EnvAllowList) -> Self {
        let mut rt = ProviderRt {
            name: p.name.clone(),
            kind: p.kind,
            family: Family::of(p.kind),
            relays_responses: p.relays_responses(),
            unavailable: None,
            base: p.base_url.as_str().trim_end_matches('/').to_owned(),
            auth: None,
            api_version: p
                .api_version
                .clone()
                .unwrap_or_else(|| drover_proto::model::DEFAULT_AZURE_API_VERSION.to_owned()),
            fixed: Vec::new(),
        };
        match credential::resolve(&p.credential, env, allow) {
            Ok(None) => {}
            Ok(Some(key)) => {
                let (name, value) = match p.kind {
                    ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => openai::auth(&key),
                    ProviderKind::Azure => azure::auth(&key),
                    ProviderKind::Anthropic => anthropic::auth(&key),
                    ProviderKind::Gemini => gemini::auth(&key),
                };
                match HeaderValue::try_from(value) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        rt.auth = Some((name, v));
                    }
                    Err(_) => {
                        rt.unavailable =
                            Some("its API key contains characters not allowed in a header".to_owned());
                    }
                }
            }
            Err(reason) => rt.unavailable = Some(reason),
        }
        for op in [
            Op::Chat,
            Op::Completions,
            Op::Embeddings,
            Op::Responses,
            Op::Messages,
            Op::CountTokens,
        ] {
            match rt.build_url(op, "", false) {
                Ok(Some(uri)) => rt.fixed.push((op, uri)),
                Ok(None) | Err(BuildError::Unsupported) => {}
                Err(e) => {
                    rt.unavailable
                        .get_or_insert_with(|| format!("its base URL is not usable: {e}"));
                }
            }
        }
        rt
    }

    /// `Some(uri)` for a URL that does not depend on the model; `None` for one that does.
    fn build_url(&self, op: Op, model: &str, stream: bool) -> Result<Option<Uri>, BuildError> {
        let path = match self.kind {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => openai::path(op).map(str::to_owned),
            ProviderKind::Anthropic => anthropic::path(op).map(str::to_owned),
            // Azure's Responses endpoint takes the deployment in the body, not the path.
            ProviderKind::Azure if op == Op::Responses => Some(azure::RESPONSES_PATH.to_owned()),
            ProviderKind::Azure | ProviderKind::Gemini if model.is_empty() => return Ok(None),
            // The model goes into the path: exactly one segment that needs no escaping, or nothing.
            ProviderKind::Azure | ProviderKind::Gemini if !is_path_segment_model(model) => {
                return Err(BuildError::Model);
            }
            ProviderKind::Azure => azure::path(op, model, &self.api_version),
            ProviderKind::Gemini => gemini::path(op, model, stream),
        }
        .ok_or(BuildError::Unsupported)?;
        Ok(Some(Uri::try_from(format!("{}{path}", self.base))?))
    }

    /// The URL for `op` on `model`.
    pub fn url(&self, op: Op, model: &str, stream: bool) -> Result<Uri, BuildError> {
        if let Some((_, uri)) = self.fixed.iter().find(|(o, _)| *o == op) {
            return Ok(uri.clone());
        }
        self.build_url(op, model, stream)?.ok_or(BuildError::Unsupported)
    }

    /// Whether this provider offers `op`.
    pub fn offers(&self, op: Op) -> bool {
        match self.kind {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => openai::path(op).is_some(),
            ProviderKind::Anthropic => anthropic::path(op).is_some(),
            ProviderKind::Azure => op == Op::Responses || azure::path(op, "m", "v").is_some(),
            ProviderKind::Gemini => gemini::path(op, "m", false).is_some(),
        }
    }

    /// Builds the upstream request. Of the caller's headers only the request id goes
    /// upstream, plus, to Anthropic, `anthropic-version` and `anthropic-beta` when given.
    pub fn request(&self, up: &Upstream<'_>, body: Bytes) -> Result<Request<Full<Bytes>>, BuildError> {
        let uri = self.url(up.op, up.model, up.stream)?;
        let accept = if up.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, HeaderValue::from_static(accept))
            .header("x-request-id", up.request_id.clone());
        if let Some((name, value)) = &self.auth {
            req = req.header(name.clone(), value.clone());
        }
        if self.family == Family::Anthropic {
            req = anthropic::headers(req, up.anthropic_version, up.anthropic_beta);
        }
        Ok(req.body(Full::new(body))?)
    }
}

/// One upstream call, before its body.
pub struct Upstream<'a> {
    pub op: Op,
    /// The model as the provider knows it.
    pub model: &'a str,
    pub stream: bool,
    pub request_id: &'a HeaderValue,
    /// The caller's `anthropic-version`, when it speaks Anthropic's format.
    pub anthropic_version: Option<&'a HeaderValue>,
    pub anthropic_beta: Option<&'a HeaderValue>,
}

/// The HTTP client every upstream request goes through: pooled keep-alive connections,
/// HTTP/1.1 and HTTP/2 (ALPN), TLS with the webpki roots.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::model::{Credential, Secret, URL_STEERING_MODELS};

    fn provider_with(kind: ProviderKind, base: &str, credential: Credential) -> ProviderRt {
        let p = Provider {
            name: "p".into(),
            kind,
            base_url: drover_proto::model::parse_base_url(base).unwrap(),
            credential,
            api_version: None,
            responses_api: None,
        };
        let env: EnvLookup =
            std::sync::Arc::new(|var: &str| (var == "SET_API_KEY").then(|| "k-env".to_owned()));
        ProviderRt::compile(&p, &env, &credential::EnvAllowList::default())
    }

    fn provider(kind: ProviderKind, base: &str) -> ProviderRt {
        let p = provider_with(kind, base, Credential::Key(Secret::new("k-1")));
        assert_eq!(p.unavailable, None);
        p
    }

    fn rid() -> HeaderValue {
        HeaderValue::from_static("r1")
    }

    fn up<'a>(op: Op, model: &'a str, stream: bool, id: &'a HeaderValue) -> Upstream<'a> {
        Upstream {
            op,
            model,
            stream,
            request_id: id,
            anthropic_version: None,
            anthropic_beta: None,
        }
    }

    #[test]
    fn each_kind_gets_its_urls_and_auth_header() {
        let id = rid();
        let cases = [
            (
                ProviderKind::OpenAi,
                "https://api.openai.com/v1/",
                Op::Chat,
                "gpt",
                false,
                "https://api.openai.com/v1/chat/completions",
                "authorization",
                "Bearer k-1",
            ),
            (
                ProviderKind::OpenAiCompatible,
                "http://127.0.0.1:8000/v1",
                Op::Responses,
                "m",
                true,
                "http://127.0.0.1:8000/v1/responses",
                "authorization",
                "Bearer k-1",
            ),
            (
                ProviderKind::Azure,
                "https://res.openai.azure.com",
                Op::Chat,
                "my-deploy",
                false,
                "https://res.openai.azure.com/openai/deployments/my-deploy/chat/completions?api-version=2024-10-21",
                "api-key",
                "k-1",
            ),
            (
                ProviderKind::Azure,
                "https://res.openai.azure.com",
                Op::Responses,
                "my-deploy",
                true,
                "https://res.openai.azure.com/openai/v1/responses",
                "api-key",
                "k-1",
            ),
            (
                ProviderKind::Anthropic,
                "https://api.anthropic.com/v1",
                Op::Messages,
                "claude",
                true,
                "https://api.anthropic.com/v1/messages",
                "x-api-key",
                "k-1",
            ),
            (
                ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
                Op::Generate,
                "gemini-2.5-flash",
                false,
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
                "x-goog-api-key",
                "k-1",
            ),
            (
                ProviderKind::Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
                Op::Generate,
                "gemini-2.5-flash",
                true,
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                "x-goog-api-key",
                "k-1",
            ),
        ];
        for (kind, base, op, model, stream, url, header, value) in cases {
            let p = provider(kind, base);
            let req = p.request(&up(op, model, stream, &id), Bytes::new()).unwrap();
            assert_eq!(req.uri().to_string(), url, "{kind}");
            assert_eq!(req.headers()[header], value, "{kind}");
            assert!(req.headers()[header].is_sensitive());
            assert_eq!(req.headers()["x-request-id"], "r1");
        }
        let anthropic = provider(ProviderKind::Anthropic, "https://api.anthropic.com/v1");
        let req = anthropic
            .request(&up(Op::Messages, "c", false, &id), Bytes::new())
            .unwrap();
        assert_eq!(req.headers()["anthropic-version"], anthropic::DEFAULT_VERSION);
    }

    #[test]
    fn responses_calls_are_relayed_by_default_only_where_the_endpoint_is_known_to_exist() {
        use drover_proto::model::ResponsesApi;
        let kinds = [
            (ProviderKind::OpenAi, true),
            (ProviderKind::Azure, true),
            (ProviderKind::OpenAiCompatible, false),
            (ProviderKind::Anthropic, false),
            (ProviderKind::Gemini, false),
        ];
        for (kind, relays) in kinds {
            assert_eq!(
                provider(kind, "https://x.example/v1").relays_responses,
                relays,
                "{kind}"
            );
        }
        let env: EnvLookup = std::sync::Arc::new(|_: &str| None);
        for (kind, mode, relays) in [
            (ProviderKind::OpenAiCompatible, ResponsesApi::Relay, true),
            (ProviderKind::OpenAi, ResponsesApi::Translate, false),
            (ProviderKind::Azure, ResponsesApi::Translate, false),
        ] {
            let p = Provider {
                name: "p".into(),
                kind,
                base_url: drover_proto::model::parse_base_url("https://x.example/v1").unwrap(),
                credential: Credential::None,
                api_version: None,
                responses_api: Some(mode),
            };
            let rt = ProviderRt::compile(&p, &env, &credential::EnvAllowList::default());
            assert_eq!(rt.relays_responses, relays, "{kind} {mode:?}");
        }
    }

    #[test]
    fn operations_a_kind_does_not_offer_are_refused() {
        let id = rid();
        let gemini = provider(ProviderKind::Gemini, "https://g.example/v1beta");
        assert!(matches!(
            gemini.request(&up(Op::Embeddings, "m", false, &id), Bytes::new()),
            Err(BuildError::Unsupported)
        ));
        assert!(!gemini.offers(Op::Chat));
        assert!(gemini.offers(Op::Generate));
        let anthropic = provider(ProviderKind::Anthropic, "https://a.example/v1");
        assert!(!anthropic.offers(Op::Chat));
        assert!(anthropic.offers(Op::CountTokens));
        let azure = provider(ProviderKind::Azure, "https://res.openai.azure.com");
        assert!(azure.offers(Op::Responses));
        assert!(azure.offers(Op::Embeddings));
    }

    #[test]
    fn a_model_never_changes_the_path_method_or_query() {
        let id = rid();
        let hostile: Vec<&str> = URL_STEERING_MODELS
            .iter()
            .copied()
            .chain(["x y", "x\ny"])
            .collect();
        // Kinds with the model in the body: always their fixed path, never a query.
        for (kind, base, op, path) in [
            (
                ProviderKind::OpenAi,
                "https://o.example/v1",
                Op::Chat,
                "/v1/chat/completions",
            ),
            (
                ProviderKind::OpenAiCompatible,
                "https://c.example/v1",
                Op::Embeddings,
                "/v1/embeddings",
            ),
            (
                ProviderKind::Anthropic,
                "https://a.example/v1",
                Op::Messages,
                "/v1/messages",
            ),
        ] {
            let p = provider(kind, base);
            for &model in &hostile {
                let req = p.request(&up(op, model, true, &id), Bytes::new()).unwrap();
                assert_eq!(req.uri().path(), path, "{kind} {model:?}");
                assert_eq!(req.uri().query(), None, "{kind} {model:?}");
            }
        }
        // Kinds with the model in the path: refused, whatever the operation.
        for (kind, base, op) in [
            (ProviderKind::Azure, "https://res.openai.azure.com", Op::Chat),
            (
                ProviderKind::Azure,
                "https://res.openai.azure.com",
                Op::Embeddings,
            ),
            (ProviderKind::Gemini, "https://g.example/v1beta", Op::Generate),
        ] {
            let p = provider(kind, base);
            for &model in &hostile {
                for stream in [false, true] {
                    assert!(
                        matches!(
                            p.request(&up(op, model, stream, &id), Bytes::new()),
                            Err(BuildError::Model)
                        ),
                        "{kind} {model:?}"
                    );
                }
            }
            let ok = p
                .request(&up(op, "Model_1.5-x", false, &id), Bytes::new())
                .unwrap();
            assert!(ok.uri().path().contains("/Model_1.5-x"), "{}", ok.uri());
        }
    }

    #[test]
    fn an_unresolvable_credential_makes_the_provider_unavailable_not_invalid() {
        let env = |var: &str| Credential::Env(var.to_owned());
        let ok = provider_with(ProviderKind::OpenAi, "https://o.example/v1", env("SET_API_KEY"));
        assert_eq!(ok.unavailable, None);
        let id = rid();
        let req = ok.request(&up(Op::Chat, "m", false, &id), Bytes::new()).unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer k-env");
        for (credential, want) in [
            (
                env("UNSET_API_KEY"),
                "environment variable UNSET_API_KEY is not set on this data plane",
            ),
            (
                env("HOME"),
                "HOME is not allowed by this data plane's --credential-env-allow (*_API_KEY)",
            ),
            (
                env("DROVER_ADMIN_TOKEN"),
                "DROVER_ADMIN_TOKEN is one of Drover's own settings",
            ),
            (
                Credential::Key(Secret::new("bad\u{7f}key")),
                "its API key contains characters not allowed in a header",
            ),
        ] {
            let p = provider_with(ProviderKind::Anthropic, "https://a.example/v1", credential);
            let reason = p.unavailable.clone().unwrap();
            assert!(reason.contains(want), "{reason}");
            assert!(!reason.contains("bad\u{7f}key"));
            assert!(p.auth.is_none());
        }
    }
}
