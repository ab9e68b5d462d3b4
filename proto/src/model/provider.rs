//! Upstream providers: their kind, base URL, credential and Azure `api-version`.

use std::fmt;

use url::Url;

use super::{Credential, InvalidPolicy, quoted, validate_credential_env, validate_provider_name};
use crate::pb;

/// Longest provider base URL accepted, bytes.
pub const MAX_BASE_URL_LEN: usize = 2048;
/// The Azure OpenAI `api-version` a data plane uses for an azure provider that sets none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
/// Longest Azure OpenAI `api-version` accepted.
pub const MAX_API_VERSION_LEN: usize = 64;

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Azure,
    Gemini,
    OpenAiCompatible,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Azure,
        ProviderKind::Gemini,
        ProviderKind::OpenAiCompatible,
    ];

    /// The name used by the CLI and in documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
            ProviderKind::Gemini => "gemini",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }

    /// Parses a CLI name (`openai`, `openai-compatible`, …).
    pub fn parse(name: &str) -> Result<Self, InvalidPolicy> {
        Self::ALL.into_iter().find(|k| k.as_str() == name).ok_or_else(|| {
            InvalidPolicy::new(
                "kind",
                format!(
                    "unknown provider kind {}; expected one of {}",
                    quoted(name),
                    Self::ALL.map(ProviderKind::as_str).join(", ")
                ),
            )
        })
    }

    /// Whether the provider speaks OpenAI's wire format.
    pub fn is_openai_format(self) -> bool {
        matches!(self, ProviderKind::OpenAi | ProviderKind::OpenAiCompatible)
    }

    fn from_wire(value: i32) -> Result<Self, InvalidPolicy> {
        match pb::ProviderKind::try_from(value) {
            Ok(pb::ProviderKind::Openai) => Ok(ProviderKind::OpenAi),
            Ok(pb::ProviderKind::Anthropic) => Ok(ProviderKind::Anthropic),
            Ok(pb::ProviderKind::Azure) => Ok(ProviderKind::Azure),
            Ok(pb::ProviderKind::Gemini) => Ok(ProviderKind::Gemini),
            Ok(pb::ProviderKind::OpenaiCompatible) => Ok(ProviderKind::OpenAiCompatible),
            Ok(pb::ProviderKind::Unspecified) => Err(InvalidPolicy::new("kind", "provider kind is required")),
            Err(_) => Err(InvalidPolicy::new(
                "kind",
                format!("unknown provider kind {value}"),
            )),
        }
    }

    pub fn to_wire(self) -> pb::ProviderKind {
        match self {
            ProviderKind::OpenAi => pb::ProviderKind::Openai,
            ProviderKind::Anthropic => pb::ProviderKind::Anthropic,
            ProviderKind::Azure => pb::ProviderKind::Azure,
            ProviderKind::Gemini => pb::ProviderKind::Gemini,
            ProviderKind::OpenAiCompatible => pb::ProviderKind::OpenaiCompatible,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL, without a trailing slash.
    pub base_url: Url,
    pub credential: Credential,
    /// Azure OpenAI `api-version` query parameter. Only ever `Some` for [`ProviderKind::Azure`];
    /// `None`: the data plane's default ([`DEFAULT_AZURE_API_VERSION`]).
    pub api_version: Option<String>,
    /// How Responses API calls reach it, as set; `None`: the kind's default. Only ever `Some`
    /// for kinds that speak OpenAI's format (openai, azure, openai-compatible).
    pub responses_api: Option<ResponsesApi>,
}

/// How a provider of OpenAI's format gets calls of the Responses API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponsesApi {
    /// Relayed untouched to the provider's own Responses endpoint.
    Relay,
    /// Translated to chat completions.
    Translate,
}

impl ResponsesApi {
    pub const ALL: [ResponsesApi; 2] = [ResponsesApi::Relay, ResponsesApi::Translate];

    pub fn as_str(self) -> &'static str {
        match self {
            ResponsesApi::Relay => "relay",
            ResponsesApi::Translate => "translate",
        }
    }

    /// Parses a CLI or store name (`relay`, `translate`).
    pub fn parse(name: &str) -> Result<Self, InvalidPolicy> {
        Self::ALL.into_iter().find(|m| m.as_str() == name).ok_or_else(|| {
            InvalidPolicy::new(
                "responses_api",
                format!("unknown mode {}; expected relay or translate", quoted(name)),
            )
        })
    }

    /// What a provider of `kind` does without a setting: relay where the provider is known to
    /// have the endpoint (OpenAI, Azure), translate for OpenAI-compatible servers, many of
    /// which have no `/v1/responses`.
    pub fn default_for(kind: ProviderKind) -> Option<Self> {
        match kind {
            ProviderKind::OpenAi | ProviderKind::Azure => Some(ResponsesApi::Relay),
            ProviderKind::OpenAiCompatible => Some(ResponsesApi::Translate),
            ProviderKind::Anthropic | ProviderKind::Gemini => None,
        }
    }

    pub fn to_wire(mode: Option<Self>) -> pb::ResponsesApi {
        match mode {
            None => pb::ResponsesApi::Unspecified,
            Some(ResponsesApi::Relay) => pb::ResponsesApi::Relay,
            Some(ResponsesApi::Translate) => pb::ResponsesApi::Translate,
        }
    }

    /// A wire value: `Ok(None)` for unspecified; a value this build does not know is refused.
    pub fn from_wire_value(value: i32) -> Result<Option<Self>, InvalidPolicy> {
        match pb::ResponsesApi::try_from(value) {
            Ok(pb::ResponsesApi::Unspecified) => Ok(None),
            Ok(pb::ResponsesApi::Relay) => Ok(Some(ResponsesApi::Relay)),
            Ok(pb::ResponsesApi::Translate) => Ok(Some(ResponsesApi::Translate)),
            Err(_) => Err(InvalidPolicy::new(
                "responses_api",
                format!("unknown mode {value}"),
            )),
        }
    }

    /// The setting of a provider of `kind` from the wire, where unspecified means unset.
    fn from_wire(kind: ProviderKind, value: i32) -> Result<Option<Self>, InvalidPolicy> {
        let mode = Self::from_wire_value(value)?;
        if mode.is_some() {
            Self::check(kind)?;
        }
        Ok(mode)
    }

    /// Refuses a setting on a kind that has no Responses endpoint to relay to.
    pub fn check(kind: ProviderKind) -> Result<(), InvalidPolicy> {
        if Self::default_for(kind).is_none() {
            return Err(InvalidPolicy::new(
                "responses_api",
                format!(
                    "{kind} providers always get Responses calls translated; only openai, azure and openai-compatible take this setting"
                ),
            ));
        }
        Ok(())
    }
}

impl Provider {
    /// Whether Responses API calls are relayed to this provider's own endpoint.
    pub fn relays_responses(&self) -> bool {
        self.responses_api.or(ResponsesApi::default_for(self.kind)) == Some(ResponsesApi::Relay)
    }
}

/// Checks an Azure OpenAI `api-version`: 1–64 of `[A-Za-z0-9.-]`, e.g. `2024-10-21` or
/// `2025-04-01-preview`. It goes into a query string, so nothing else is accepted.
pub fn validate_api_version(version: &str) -> Result<(), InvalidPolicy> {
    let ok = !version.is_empty()
        && version.len() <= MAX_API_VERSION_LEN
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            "api_version",
            format!(
                "{} must be 1-{MAX_API_VERSION_LEN} of A-Z, a-z, 0-9, '.' and '-', e.g. {DEFAULT_AZURE_API_VERSION}",
                quoted(version)
            ),
        ))
    }
}

/// The `api-version` of a provider of `kind` from the wire, where empty means unset.
fn api_version_from_wire(kind: ProviderKind, raw: &str) -> Result<Option<String>, InvalidPolicy> {
    if raw.is_empty() {
        return Ok(None);
    }
    if kind != ProviderKind::Azure {
        return Err(InvalidPolicy::new(
            "api_version",
            "only azure providers take an api-version",
        ));
    }
    validate_api_version(raw)?;
    Ok(Some(raw.to_owned()))
}

/// Parses and checks a provider base URL: at most 2 KiB, http or https, a host, no credentials,
/// query or fragment. The trailing slash is removed so that paths can be appended.
pub fn parse_base_url(raw: &str) -> Result<Url, InvalidPolicy> {
    let field = "base_url";
    if raw.len() > MAX_BASE_URL_LEN {
        return Err(InvalidPolicy::new(
            field,
            format!("{} is longer than {MAX_BASE_URL_LEN} bytes", quoted(raw)),
        ));
    }
    let url = Url::parse(raw)
        .map_err(|e| InvalidPolicy::new(field, format!("{} is not a URL: {e}", quoted(raw))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(InvalidPolicy::new(
            field,
            format!("scheme must be http or https, not {:?}", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidPolicy::new(field, "must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidPolicy::new(
            field,
            "must not contain credentials; use --api-key or --api-key-env",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(InvalidPolicy::new(field, "must not have a query or fragment"));
    }
    let mut url = url;
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

impl TryFrom<&pb::Provider> for Provider {
    type Error = InvalidPolicy;

    fn try_from(p: &pb::Provider) -> Result<Self, InvalidPolicy> {
        let within = format!("provider {}", quoted(&p.name));
        validate_provider_name(&p.name).map_err(|e| e.within(&within))?;
        let kind = ProviderKind::from_wire(p.kind).map_err(|e| e.within(&within))?;
        let base_url = parse_base_url(&p.base_url).map_err(|e| e.within(&within))?;
        let (env, key) = match &p.credential {
            Some(pb::provider::Credential::ApiKeyEnv(v)) => (Some(v.as_str()), None),
            Some(pb::provider::Credential::ApiKey(k)) => (None, Some(k.as_str())),
            None => (None, None),
        };
        let credential = Credential::from_wire(env, key).map_err(|e| e.within(&within))?;
        let api_version = api_version_from_wire(kind, &p.api_version).map_err(|e| e.within(&within))?;
        let responses_api = ResponsesApi::from_wire(kind, p.responses_api).map_err(|e| e.within(&within))?;
        Ok(Provider {
            name: p.name.clone(),
            kind,
            base_url,
            credential,
            api_version,
            responses_api,
        })
    }
}

impl TryFrom<&pb::AddProviderRequest> for Provider {
    type Error = InvalidPolicy;

    fn try_from(r: &pb::AddProviderRequest) -> Result<Self, InvalidPolicy> {
        let credential = r.credential.as_ref().map(|c| match c {
            pb::add_provider_request::Credential::ApiKeyEnv(v) => {
                pb::provider::Credential::ApiKeyEnv(v.clone())
            }
            pb::add_provider_request::Credential::ApiKey(k) => pb::provider::Credential::ApiKey(k.clone()),
        });
        let provider = Provider::try_from(&pb::Provider {
            name: r.name.clone(),
            kind: r.kind,
            base_url: r.base_url.clone(),
            credential,
            api_version: r.api_version.clone(),
            responses_api: r.responses_api,
        })?;
        // Stricter than a snapshot: a new reference to Drover's own settings is refused outright
        // (a data plane given one from an older store refuses to resolve it instead).
        if let Credential::Env(var) = &provider.credential {
            validate_credential_env(var).map_err(|e| e.within(&format!("provider {}", quoted(&r.name))))?;
        }
        Ok(provider)
    }
}

impl From<&Provider> for pb::Provider {
    fn from(p: &Provider) -> Self {
        let credential = match &p.credential {
            Credential::None => None,
            Credential::Env(v) => Some(pb::provider::Credential::ApiKeyEnv(v.clone())),
            Credential::Key(k) => Some(pb::provider::Credential::ApiKey(k.expose().to_owned())),
        };
        pb::Provider {
            name: p.name.clone(),
            kind: p.kind.to_wire() as i32,
            base_url: p.base_url.to_string(),
            credential,
            api_version: p.api_version.clone().unwrap_or_default(),
            responses_api: ResponsesApi::to_wire(p.responses_api) as i32,
        }
    }
}

impl From<&Provider> for pb::ProviderInfo {
    fn from(p: &Provider) -> Self {
        pb::ProviderInfo {
            name: p.name.clone(),
            kind: p.kind.to_wire() as i32,
            base_url: p.base_url.to_string(),
            credential: p.credential.describe(),
            api_version: p.api_version.clone().unwrap_or_default(),
            responses_api: ResponsesApi::to_wire(p.responses_api) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use crate::model::test_support::{azure, snapshot};

    #[test]
    fn responses_api_is_carried_both_ways_and_only_for_kinds_with_the_endpoint() {
        let mut s = snapshot();
        let mut translated = azure("az", "");
        translated.responses_api = pb::ResponsesApi::Translate as i32;
        s.providers.push(translated);
        let snap = Snapshot::try_from(&s).unwrap();
        assert_eq!(snap.providers[0].responses_api, None);
        assert!(snap.providers[0].relays_responses(), "openai relays by default");
        assert_eq!(snap.providers[1].responses_api, Some(ResponsesApi::Translate));
        assert!(!snap.providers[1].relays_responses());
        assert_eq!(Snapshot::try_from(&pb::Snapshot::from(&snap)).unwrap(), snap);
        assert_eq!(
            pb::ProviderInfo::from(&snap.providers[1]).responses_api,
            pb::ResponsesApi::Translate as i32
        );

        for (kind, ok) in [
            (pb::ProviderKind::Openai, true),
            (pb::ProviderKind::OpenaiCompatible, true),
            (pb::ProviderKind::Anthropic, false),
            (pb::ProviderKind::Gemini, false),
        ] {
            let mut p = crate::model::test_support::provider("p");
            p.kind = kind as i32;
            p.responses_api = pb::ResponsesApi::Relay as i32;
            match Provider::try_from(&p) {
                Ok(p) => {
                    assert!(ok, "{kind:?}");
                    assert!(p.relays_responses());
                }
                Err(e) => {
                    assert!(!ok, "{kind:?}");
                    assert_eq!(e.field, "provider \"p\"/responses_api");
                }
            }
        }
        let mut p = crate::model::test_support::provider("p");
        p.responses_api = 9;
        assert_eq!(
            Provider::try_from(&p).unwrap_err().field,
            "provider \"p\"/responses_api"
        );
        assert_eq!(ResponsesApi::parse("translate"), Ok(ResponsesApi::Translate));
        assert!(ResponsesApi::parse("native").is_err());
    }

    #[test]
    fn azure_api_version_is_optional_and_carried_both_ways() {
        let mut s = snapshot();
        s.providers.push(azure("az-preview", "2025-04-01-preview"));
        s.providers.push(azure("az-default", ""));
        let snap = Snapshot::try_from(&s).unwrap();
        assert_eq!(snap.providers[0].api_version, None);
        assert_eq!(
            snap.providers[1].api_version.as_deref(),
            Some("2025-04-01-preview")
        );
        assert_eq!(snap.providers[2].api_version, None);
        assert_eq!(Snapshot::try_from(&pb::Snapshot::from(&snap)).unwrap(), snap);
        assert_eq!(
            pb::Provider::from(&snap.providers[1]).api_version,
            "2025-04-01-preview"
        );
        assert_eq!(pb::Provider::from(&snap.providers[2]).api_version, "");

        let info = pb::ProviderInfo::from(&snap.providers[1]);
        assert_eq!(info.api_version, "2025-04-01-preview");
        assert_eq!(pb::ProviderInfo::from(&snap.providers[2]).api_version, "");

        let request = pb::AddProviderRequest {
            name: "az".into(),
            kind: pb::ProviderKind::Azure as i32,
            base_url: "https://res.openai.azure.com".into(),
            credential: None,
            replace: false,
            api_version: DEFAULT_AZURE_API_VERSION.into(),
            responses_api: 0,
        };
        let p = Provider::try_from(&request).unwrap();
        assert_eq!(p.api_version.as_deref(), Some("2024-10-21"));
    }

    #[test]
    fn api_version_is_only_for_azure_and_only_safe_characters() {
        for kind in ProviderKind::ALL {
            let mut p = azure("p", "2024-10-21");
            p.kind = kind.to_wire() as i32;
            match Provider::try_from(&p) {
                Ok(p) => {
                    assert_eq!(kind, ProviderKind::Azure);
                    assert_eq!(p.api_version.as_deref(), Some("2024-10-21"));
                }
                Err(e) => {
                    assert_ne!(kind, ProviderKind::Azure);
                    assert_eq!(e.field, "provider \"p\"/api_version");
                    assert_eq!(e.reason, "only azure providers take an api-version");
                }
            }
        }
        let request = pb::AddProviderRequest {
            name: "oa".into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "https://api.openai.com/v1".into(),
            credential: None,
            replace: false,
            api_version: "2024-10-21".into(),
            responses_api: 0,
        };
        let err = Provider::try_from(&request).unwrap_err();
        assert_eq!(err.field, "provider \"oa\"/api_version");

        let longest = "1".repeat(MAX_API_VERSION_LEN);
        for good in ["2024-10-21", "2025-04-01-preview", "v1", "1.0", longest.as_str()] {
            assert_eq!(validate_api_version(good), Ok(()), "{good:?}");
        }
        let too_long = "1".repeat(MAX_API_VERSION_LEN + 1);
        for bad in [
            "",
            too_long.as_str(),
            "2024 10 21",
            "2024-10-21&x=y",
            "2024/10/21",
            "2024_10_21",
            "2024-10-21\n",
            "é",
        ] {
            let err = validate_api_version(bad).unwrap_err();
            assert_eq!(err.field, "api_version", "{bad:?}");
        }
    }
}
