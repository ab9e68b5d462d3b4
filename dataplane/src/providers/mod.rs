//! Upstream providers: the compiled form of a provider (URLs, auth header) and the shared
//! HTTP client that reaches them. One folder per provider kind for what is specific to it.

pub mod openai;

use std::time::Duration;

use bytes::Bytes;
use drover_proto::model::{Credential, InvalidPolicy, Provider, ProviderKind};
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Resolves a credential reference (`env:VAR`) on this data plane.
pub type EnvLookup = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The OpenAI-format endpoints the gateway proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path below the provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    pub fn can_stream(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }
}

/// A provider ready for requests: URLs parsed and credential resolved, once per snapshot.
#[derive(Debug)]
pub struct ProviderRt {
    pub name: String,
    pub kind: ProviderKind,
    chat_url: Uri,
    completions_url: Uri,
    embeddings_url: Uri,
    /// `Bearer KEY`, marked sensitive so it is never logged.
    pub auth: Option<HeaderValue>,
}

impl ProviderRt {
    /// Compiles a provider; fails if its credential cannot be resolved on this data plane.
    pub fn compile(p: &Provider, env: &EnvLookup) -> Result<Self, InvalidPolicy> {
        let at = |reason: String| InvalidPolicy::new(format!("provider {:?}", p.name), reason);
        let key = match &p.credential {
            Credential::None => None,
            Credential::Key(k) => Some(k.expose().to_owned()),
            Credential::Env(var) => Some(env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                at(format!(
                    "environment variable {var} is not set on this data plane"
                ))
            })?),
        };
        let auth = key
            .map(|k| {
                let mut v = HeaderValue::try_from(format!("Bearer {k}"))
                    .map_err(|_| at("the API key contains characters not allowed in a header".to_owned()))?;
                v.set_sensitive(true);
                Ok::<_, InvalidPolicy>(v)
            })
            .transpose()?;
        let base = p.base_url.as_str().trim_end_matches('/');
        let url = |e: Endpoint| {
            Uri::try_from(format!("{base}{}", e.path()))
                .map_err(|e| at(format!("base URL is not usable: {e}")))
        };
        Ok(ProviderRt {
            name: p.name.clone(),
            kind: p.kind,
            chat_url: url(Endpoint::ChatCompletions)?,
            completions_url: url(Endpoint::Completions)?,
            embeddings_url: url(Endpoint::Embeddings)?,
            auth,
        })
    }

    pub fn url(&self, endpoint: Endpoint) -> &Uri {
        match endpoint {
            Endpoint::ChatCompletions => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
            Endpoint::Embeddings => &self.embeddings_url,
        }
    }
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
