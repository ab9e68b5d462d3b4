//! Validated domain types for Drover's policy, and their conversions from and to the wire.
//!
//! Every `TryFrom<pb::…>` here validates, so code that holds a `model` value never re-checks
//! it. The same rules serve the admin API (invalid input is refused before anything is
//! written) and the data plane (an invalid snapshot is NACKed), except for a target model its
//! provider's kind cannot carry: the admin API refuses it, a data plane only leaves that target
//! unusable (see [`Snapshot`]).

use std::collections::HashSet;
use std::fmt;

use url::Url;

use crate::pb;

/// Why a piece of policy is invalid: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPolicy {
    /// Path of the offending field, e.g. `route "gpt"/targets[1]/provider`.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl InvalidPolicy {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}/{}", self.field),
            reason: self.reason,
        }
    }
}

/// Longest provider name accepted, bytes.
pub const MAX_PROVIDER_NAME_LEN: usize = 64;
/// Longest alias or model name accepted, bytes (route aliases, target models, the model part of a
/// price key, data plane ids).
pub const MAX_NAME_LEN: usize = 256;
/// Longest `model` a caller may send, bytes: a direct `provider/model` name at its longest.
pub const MAX_REQUEST_MODEL_LEN: usize = MAX_PROVIDER_NAME_LEN + 1 + MAX_NAME_LEN;
/// Longest price key accepted, bytes (`provider/model` at its longest).
pub const MAX_PRICE_KEY_LEN: usize = MAX_REQUEST_MODEL_LEN;
/// Longest environment variable name accepted as a credential reference, bytes.
pub const MAX_ENV_VAR_LEN: usize = 128;
/// Longest provider base URL accepted, bytes.
pub const MAX_BASE_URL_LEN: usize = 2048;
/// Longest stored API key accepted, bytes.
pub const MAX_API_KEY_LEN: usize = 8192;
/// Most targets a route may have.
pub const MAX_TARGETS: usize = 64;
/// Largest price accepted, USD per million tokens.
pub const MAX_PRICE_PER_MTOK: f64 = 1_000_000.0;
/// Largest target weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// The Azure OpenAI `api-version` a data plane uses for an azure provider that sets none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
/// Longest Azure OpenAI `api-version` accepted.
pub const MAX_API_VERSION_LEN: usize = 64;
/// Environment variables with this prefix (any case) are Drover's own settings, tokens and keys
/// among them: never a provider credential, whatever a data plane's allow-list says.
pub const RESERVED_ENV_PREFIX: &str = "DROVER_";
/// Characters of a value an error message quotes at most; the rest is summarised by its size.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `value` quoted (Rust string escapes, as `{:?}` prints it) for an error message, cut after
/// [`MAX_QUOTED_CHARS`] characters so that huge input is never echoed back whole.
pub fn quoted(value: &str) -> String {
    let cut = head(value, MAX_QUOTED_CHARS);
    if cut.len() == value.len() {
        format!("{value:?}")
    } else {
        format!("{cut:?}... ({} bytes)", value.len())
    }
}

/// The first `max_chars` characters of `value`.
fn head(value: &str, max_chars: usize) -> &str {
    value
        .char_indices()
        .nth(max_chars)
        .map_or(value, |(cut, _)| &value[..cut])
}

/// Whether `var` is one of Drover's own settings ([`RESERVED_ENV_PREFIX`], any case).
pub fn is_reserved_env_var(var: &str) -> bool {
    var.get(..RESERVED_ENV_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_ENV_PREFIX))
}

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

/// A secret value. Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call only where it is sent to its one legitimate destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a provider's API key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential is sent upstream.
    None,
    /// An environment variable of the data plane.
    Env(String),
    /// The key itself.
    Key(Secret),
}

impl Credential {
    /// How the admin API describes it: `env:VAR`, `stored` or `none`. Never the key.
    pub fn describe(&self) -> String {
        match self {
            Credential::None => "none".to_owned(),
            Credential::Env(var) => format!("env:{var}"),
            Credential::Key(_) => "stored".to_owned(),
        }
    }

    fn from_wire(env: Option<&str>, key: Option<&str>) -> Result<Self, InvalidPolicy> {
        match (env, key) {
            (Some(var), _) => {
                validate_env_var(var)?;
                Ok(Credential::Env(var.to_owned()))
            }
            (None, Some(key)) => {
                if key.is_empty() {
                    return Err(InvalidPolicy::new("api_key", "must not be empty"));
                }
                if key.len() > MAX_API_KEY_LEN {
                    return Err(InvalidPolicy::new(
                        "api_key",
                        format!("longer than {MAX_API_KEY_LEN} bytes"),
                    ));
                }
                if key.chars().any(|c| c.is_control()) {
                    return Err(InvalidPolicy::new(
                        "api_key",
                        "must not contain control characters",
                    ));
                }
                Ok(Credential::Key(Secret::new(key)))
            }
            (None, None) => Ok(Credential::None),
        }
    }
}

/// Checks an environment variable name: 1-128 of letters, digits and `_`, not starting with a digit.
pub fn validate_env_var(var: &str) -> Result<(), InvalidPolicy> {
    let ok = !var.is_empty()
        && var.len() <= MAX_ENV_VAR_LEN
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            "api_key_env",
            format!(
                "{} is not an environment variable name (1-{MAX_ENV_VAR_LEN} of letters, digits and _, \
                 not starting with a digit)",
                quoted(var)
            ),
        ))
    }
}

/// Checks that `var` may be named as a provider credential at all: a valid name, and not one of
/// Drover's own settings (`DROVER_*`), which a provider must never be handed. The admin API
/// refuses such references; data planes refuse to resolve them whatever they are told.
pub fn validate_credential_env(var: &str) -> Result<(), InvalidPolicy> {
    validate_env_var(var)?;
    if is_reserved_env_var(var) {
        return Err(InvalidPolicy::new(
            "api_key_env",
            format!(
                "{var} is one of Drover's own settings ({RESERVED_ENV_PREFIX}*) and is never sent to a \
                 provider; keep the provider's key in another variable, e.g. OPENAI_API_KEY"
            ),
        ));
    }
    Ok(())
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
}

/// Checks a provider name: 1–64 of `[a-z0-9_-]`, starting with a letter.
pub fn validate_provider_name(name: &str) -> Result<(), InvalidPolicy> {
    if name.is_empty() {
        return Err(InvalidPolicy::new("name", "provider name must not be empty"));
    }
    let ok = name.len() <= MAX_PROVIDER_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            "name",
            format!(
                "provider name {} must be 1-{MAX_PROVIDER_NAME_LEN} of a-z, 0-9, '-' and '_', starting with a letter",
                quoted(name)
            ),
        ))
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

/// Checks a model name or alias: non-empty, at most 256 bytes, no whitespace or control characters.
pub fn validate_model_name(field: &str, name: &str) -> Result<(), InvalidPolicy> {
    validate_name(field, name, MAX_NAME_LEN)
}

/// Checks a name of at most `max_len` bytes: non-empty, no whitespace or control characters.
pub fn validate_name(field: &str, name: &str, max_len: usize) -> Result<(), InvalidPolicy> {
    if name.is_empty() {
        return Err(InvalidPolicy::new(field, "must not be empty"));
    }
    if name.len() > max_len {
        return Err(InvalidPolicy::new(
            field,
            format!("{} is longer than {max_len} bytes", quoted(name)),
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InvalidPolicy::new(
            field,
            format!(
                "{} must not contain whitespace or control characters",
                quoted(name)
            ),
        ));
    }
    Ok(())
}

/// Whether a provider of `kind` puts the model into the request URL's path (Azure OpenAI: the
/// deployment; Gemini: `models/{model}:generateContent`) rather than only into the JSON body.
pub fn model_in_path(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Azure | ProviderKind::Gemini)
}

/// Whether `model` is exactly one safe URL path segment: 1-256 of `A-Z a-z 0-9 . _ -`, and not
/// `.` or `..`. Nothing in it is special in a path or a query, so it needs no escaping.
pub fn is_path_segment_model(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= MAX_NAME_LEN
        && model != "."
        && model != ".."
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Model names that are valid for kinds that carry the model in the JSON body, but would change
/// the path, the query or the method a provider receives if put into its URL path unchecked:
/// traversal, a query, a fragment, a Gemini method suffix, escapes, separators and non-ASCII.
/// None is a safe path segment (see [`is_path_segment_model`]); every layer that keeps models
/// out of URLs is tested against them.
pub const URL_STEERING_MODELS: &[&str] = &[
    "../../../x?evil=1",
    "dep#frag",
    "gemini-pro:streamGenerateContent?alt=sse&key=x",
    "\u{fc}",
    "a/b",
    "%2e%2e",
    "%2e%2e%2fx",
    "..",
    ".",
    "a\\b",
    "m?",
    "m;x=1",
];

/// Checks that `model` can be sent to a provider of `kind`: a model name (see
/// [`validate_model_name`]) and, for kinds that put the model into the URL path (see
/// [`model_in_path`]), exactly one safe path segment (see [`is_path_segment_model`]), so that a
/// model name can never change the path, the method or the query the provider receives. Kinds that
/// carry the model only in the JSON body take any model name.
pub fn validate_target_model(kind: ProviderKind, field: &str, model: &str) -> Result<(), InvalidPolicy> {
    validate_model_name(field, model)?;
    if model_in_path(kind) && !is_path_segment_model(model) {
        return Err(InvalidPolicy::new(
            field,
            format!(
                "{} cannot be used with provider kind {kind}: the model goes into the request URL, so \
                 it must be 1-{MAX_NAME_LEN} of A-Z, a-z, 0-9, '.', '_' and '-' (and not \".\" or \"..\")",
                quoted(model)
            ),
        ));
    }
    Ok(())
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
        Ok(Provider {
            name: p.name.clone(),
            kind,
            base_url,
            credential,
            api_version,
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
        }
    }
}

/// How a route picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Fallback,
    Weighted,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
        }
    }

    pub fn parse(name: &str) -> Result<Self, InvalidPolicy> {
        match name {
            "fallback" => Ok(Strategy::Fallback),
            "weighted" => Ok(Strategy::Weighted),
            other => Err(InvalidPolicy::new(
                "strategy",
                format!(
                    "unknown strategy {}; expected fallback or weighted",
                    quoted(other)
                ),
            )),
        }
    }

    pub fn to_wire(self) -> pb::RouteStrategy {
        match self {
            Strategy::Fallback => pb::RouteStrategy::Fallback,
            Strategy::Weighted => pb::RouteStrategy::Weighted,
        }
    }
}

/// One upstream model a route can send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: String,
    pub model: String,
    /// At least 1.
    pub weight: u32,
}

impl Target {
    /// Parses `provider/model` (the model may itself contain `/`).
    pub fn parse(spec: &str) -> Result<Self, InvalidPolicy> {
        let Some((provider, model)) = spec.split_once('/') else {
            return Err(InvalidPolicy::new(
                "target",
                format!("{} must be PROVIDER/MODEL", quoted(spec)),
            ));
        };
        validate_provider_name(provider).map_err(|e| InvalidPolicy::new("target", e.reason))?;
        validate_model_name("target", model)?;
        Ok(Target {
            provider: provider.to_owned(),
            model: model.to_owned(),
            weight: 1,
        })
    }

    /// `provider/model`: the stable identity of the target, e.g. for its circuit breaker.
    pub fn id(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

/// A public model name and the targets it routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub alias: String,
    pub strategy: Strategy,
    /// Never empty.
    pub targets: Vec<Target>,
    /// Response cache TTL; 0: not cached.
    pub cache_ttl_secs: u32,
    /// Whether an attempt that broke after the request was sent may be retried. Off by
    /// default: the provider may have done (and billed) the work already.
    pub retry_after_send: bool,
}

/// Longest response cache TTL accepted: 30 days.
pub const MAX_CACHE_TTL_SECS: u32 = 30 * 24 * 3600;

impl Route {
    /// A route as the admin API takes it: the rules every snapshot keeps, plus the limits on
    /// new input (at most [`MAX_TARGETS`] targets, checked before anything else). A route
    /// stored before such a limit existed still compiles on data planes: a snapshot is
    /// refused only for what makes it unusable.
    pub fn from_admin(r: &pb::Route) -> Result<Self, InvalidPolicy> {
        if r.targets.len() > MAX_TARGETS {
            return Err(InvalidPolicy::new(
                "targets",
                format!("at most {MAX_TARGETS} targets (got {})", r.targets.len()),
            )
            .within(&format!("route {}", quoted(&r.alias))));
        }
        Route::try_from(r)
    }
}

impl TryFrom<&pb::Route> for Route {
    type Error = InvalidPolicy;

    fn try_from(r: &pb::Route) -> Result<Self, InvalidPolicy> {
        let within = format!("route {}", quoted(&r.alias));
        validate_model_name("alias", &r.alias).map_err(|e| e.within(&within))?;
        let strategy = match pb::RouteStrategy::try_from(r.strategy) {
            Ok(pb::RouteStrategy::Unspecified | pb::RouteStrategy::Fallback) => Strategy::Fallback,
            Ok(pb::RouteStrategy::Weighted) => Strategy::Weighted,
            Err(_) => {
                return Err(
                    InvalidPolicy::new("strategy", format!("unknown strategy {}", r.strategy))
                        .within(&within),
                );
            }
        };
        if r.targets.is_empty() {
            return Err(InvalidPolicy::new("targets", "a route needs at least one target").within(&within));
        }
        let mut seen = HashSet::new();
        let mut targets = Vec::with_capacity(r.targets.len());
        for (i, t) in r.targets.iter().enumerate() {
            let at = format!("{within}/targets[{i}]");
            validate_provider_name(&t.provider)
                .map_err(|e| InvalidPolicy::new("provider", e.reason).within(&at))?;
            validate_model_name("model", &t.model).map_err(|e| e.within(&at))?;
            if t.weight > MAX_WEIGHT {
                return Err(
                    InvalidPolicy::new("weight", format!("must be at most {MAX_WEIGHT}")).within(&at),
                );
            }
            if !seen.insert((t.provider.as_str(), t.model.as_str())) {
                return Err(InvalidPolicy::new(
                    "targets",
                    format!("{}/{} is listed twice", t.provider, t.model),
                )
                .within(&within));
            }
            targets.push(Target {
                provider: t.provider.clone(),
                model: t.model.clone(),
                weight: t.weight.max(1),
            });
        }
        if r.cache_ttl_secs > MAX_CACHE_TTL_SECS {
            return Err(InvalidPolicy::new(
                "cache_ttl",
                format!("must be at most {MAX_CACHE_TTL_SECS} seconds"),
            )
            .within(&within));
        }
        Ok(Route {
            alias: r.alias.clone(),
            strategy,
            targets,
            cache_ttl_secs: r.cache_ttl_secs,
            retry_after_send: r.retry_after_send,
        })
    }
}

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> Self {
        pb::Route {
            alias: r.alias.clone(),
            strategy: r.strategy.to_wire() as i32,
            targets: r
                .targets
                .iter()
                .map(|t| pb::Target {
                    provider: t.provider.clone(),
                    model: t.model.clone(),
                    weight: t.weight,
                })
                .collect(),
            cache_ttl_secs: r.cache_ttl_secs,
            retry_after_send: r.retry_after_send,
        }
    }
}

/// Price of a model, USD per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// `None`: cached input costs the input price.
    pub cached_input_per_mtok: Option<f64>,
}

fn validate_price(field: &str, value: f64) -> Result<(), InvalidPolicy> {
    if !value.is_finite() || value < 0.0 {
        return Err(InvalidPolicy::new(
            field,
            format!("{value} is not a price; must be zero or more USD"),
        ));
    }
    if value > MAX_PRICE_PER_MTOK {
        return Err(InvalidPolicy::new(
            field,
            format!("{value} exceeds {MAX_PRICE_PER_MTOK} USD per million tokens"),
        ));
    }
    Ok(())
}

/// Checks a price key: a model name, or `provider/model` where the part before the first `/`
/// is a valid provider name (the data plane looks up `provider/model` first, then `model`).
pub fn validate_price_key(key: &str) -> Result<(), InvalidPolicy> {
    validate_name("model", key, MAX_PRICE_KEY_LEN)?;
    match key.split_once('/') {
        Some((provider, model)) => {
            if validate_provider_name(provider).is_err() {
                return Err(InvalidPolicy::new(
                    "model",
                    format!(
                        "{}: before the '/', a price key names a provider (1-64 of a-z, 0-9, '-' and '_', \
                         starting with a letter); to price a model whose name has a '/', prefix it with its \
                         provider, e.g. vllm/{}",
                        quoted(key),
                        head(key, MAX_QUOTED_CHARS)
                    ),
                ));
            }
            if model.is_empty() {
                return Err(InvalidPolicy::new(
                    "model",
                    format!("{}: a model name must follow the '/'", quoted(key)),
                ));
            }
            validate_model_name("model", model)
        }
        None => validate_model_name("model", key),
    }
}

impl TryFrom<&pb::Price> for Price {
    type Error = InvalidPolicy;

    fn try_from(p: &pb::Price) -> Result<Self, InvalidPolicy> {
        let within = format!("price {}", quoted(&p.model));
        validate_price_key(&p.model).map_err(|e| e.within(&within))?;
        validate_price("input", p.input_per_mtok).map_err(|e| e.within(&within))?;
        validate_price("output", p.output_per_mtok).map_err(|e| e.within(&within))?;
        if let Some(c) = p.cached_input_per_mtok {
            validate_price("cached_input", c).map_err(|e| e.within(&within))?;
        }
        Ok(Price {
            model: p.model.clone(),
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
        })
    }
}

impl From<&Price> for pb::Price {
    fn from(p: &Price) -> Self {
        pb::Price {
            model: p.model.clone(),
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
            source: String::new(),
        }
    }
}

/// The modules this version implements on the request path: the one list the admin API, the CLI
/// and the data plane consult. A module that is not here is recorded and distributed like any
/// other flag but changes nothing, so the admin API refuses to switch it on. Empty for now.
pub const AVAILABLE_MODULES: &[Module] = &[];

/// A gateway module that can be switched on at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    Auth,
    RateLimit,
    SpendCap,
    Audit,
    Redact,
}

impl Module {
    pub const ALL: [Module; 5] = [
        Module::Auth,
        Module::RateLimit,
        Module::SpendCap,
        Module::Audit,
        Module::Redact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Module::Auth => "auth",
            Module::RateLimit => "rate_limit",
            Module::SpendCap => "spend_cap",
            Module::Audit => "audit",
            Module::Redact => "redact",
        }
    }

    /// Parses a module name; `rate-limit` is accepted for `rate_limit`.
    pub fn parse(name: &str) -> Result<Self, InvalidPolicy> {
        let normalized = name.replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == normalized)
            .ok_or_else(|| {
                InvalidPolicy::new(
                    "module",
                    format!(
                        "unknown module {}; expected one of {}",
                        quoted(name),
                        Self::ALL.map(Module::as_str).join(", ")
                    ),
                )
            })
    }

    /// Whether this version implements the module on the request path (it is in
    /// [`AVAILABLE_MODULES`]). Only an available module can be switched on.
    pub fn is_available(self) -> bool {
        AVAILABLE_MODULES.contains(&self)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of modules that are on. Anything not in the set, known or not, is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modules(u8);

impl Modules {
    pub fn is_enabled(self, module: Module) -> bool {
        self.0 & module.bit() != 0
    }

    pub fn set(&mut self, module: Module, enabled: bool) {
        if enabled {
            self.0 |= module.bit();
        } else {
            self.0 &= !module.bit();
        }
    }

    /// Every known module with its flag, in a stable order.
    pub fn to_wire(self) -> Vec<pb::Module> {
        Module::ALL
            .into_iter()
            .map(|m| pb::Module {
                name: m.as_str().to_owned(),
                enabled: self.is_enabled(m),
                available: m.is_available(),
            })
            .collect()
    }

    /// Flags from the wire. Module names this build does not know stay off.
    pub fn from_wire(modules: &[pb::Module]) -> Self {
        let mut set = Modules::default();
        for m in modules {
            if let Ok(module) = Module::parse(&m.name) {
                set.set(module, m.enabled);
            }
        }
        set
    }
}

/// Most unavailable providers a data plane's report is kept with (the rest are dropped).
pub const MAX_UNAVAILABLE_REPORTED: usize = 256;
/// Longest reason kept for an unavailable provider, bytes.
pub const MAX_UNAVAILABLE_REASON_LEN: usize = 512;

/// A provider of the serving snapshot that a data plane cannot send requests to, and why (for
/// operators; never the credential itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableProvider {
    pub provider: String,
    pub reason: String,
}

impl UnavailableProvider {
    /// A data plane's report from the wire, bounded: at most [`MAX_UNAVAILABLE_REPORTED`]
    /// entries, names cut to [`MAX_PROVIDER_NAME_LEN`] and reasons to
    /// [`MAX_UNAVAILABLE_REASON_LEN`] bytes, control characters replaced by spaces.
    pub fn from_wire(list: &[pb::UnavailableProvider]) -> Vec<Self> {
        list.iter()
            .take(MAX_UNAVAILABLE_REPORTED)
            .map(|u| UnavailableProvider {
                provider: printable_prefix(&u.provider, MAX_PROVIDER_NAME_LEN),
                reason: printable_prefix(&u.reason, MAX_UNAVAILABLE_REASON_LEN),
            })
            .collect()
    }
}

impl From<&UnavailableProvider> for pb::UnavailableProvider {
    fn from(u: &UnavailableProvider) -> Self {
        pb::UnavailableProvider {
            provider: u.provider.clone(),
            reason: u.reason.clone(),
        }
    }
}

/// A route target of the serving snapshot that a data plane can never send requests to, and
/// why: its model cannot go to its provider's kind (see [`validate_target_model`]), as a store
/// written by an older version may hold. The admin API refuses such targets; a data plane
/// given one reports it instead of rejecting the whole snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableTarget {
    /// The route's alias.
    pub route: String,
    /// `provider/model`.
    pub target: String,
    pub reason: String,
}

impl UnusableTarget {
    /// A data plane's report from the wire, bounded like [`UnavailableProvider::from_wire`]:
    /// at most [`MAX_UNAVAILABLE_REPORTED`] entries, routes cut to [`MAX_NAME_LEN`], targets to
    /// [`MAX_REQUEST_MODEL_LEN`] and reasons to [`MAX_UNAVAILABLE_REASON_LEN`] bytes.
    pub fn from_wire(list: &[pb::UnusableTarget]) -> Vec<Self> {
        list.iter()
            .take(MAX_UNAVAILABLE_REPORTED)
            .map(|u| UnusableTarget {
                route: printable_prefix(&u.route, MAX_NAME_LEN),
                target: printable_prefix(&u.target, MAX_REQUEST_MODEL_LEN),
                reason: printable_prefix(&u.reason, MAX_UNAVAILABLE_REASON_LEN),
            })
            .collect()
    }
}

impl From<&UnusableTarget> for pb::UnusableTarget {
    fn from(u: &UnusableTarget) -> Self {
        pb::UnusableTarget {
            route: u.route.clone(),
            target: u.target.clone(),
            reason: u.reason.clone(),
        }
    }
}

/// At most `max_bytes` of `s`, cut on a character boundary, control characters as spaces.
fn printable_prefix(s: &str, max_bytes: usize) -> String {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A complete, validated policy snapshot: every route names a provider that exists, names are unique.
///
/// Whether each target's model suits its provider's kind is not part of it: the admin API
/// refuses such targets when they are written (see [`validate_target_model`]), but a store
/// written by an older version may hold one, and one such target must not make every later
/// snapshot invalid. A data plane checks it per target and leaves an unfit one unusable.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub store_id: String,
    pub version: u64,
    pub providers: Vec<Provider>,
    pub routes: Vec<Route>,
    pub prices: Vec<Price>,
    pub modules: Modules,
}

impl TryFrom<&pb::Snapshot> for Snapshot {
    type Error = InvalidPolicy;

    fn try_from(s: &pb::Snapshot) -> Result<Self, InvalidPolicy> {
        if s.version == 0 {
            return Err(InvalidPolicy::new("version", "must not be 0"));
        }
        let providers = s
            .providers
            .iter()
            .map(Provider::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = HashSet::with_capacity(providers.len());
        for p in &providers {
            if !names.insert(p.name.as_str()) {
                return Err(InvalidPolicy::new(
                    format!("provider {}", quoted(&p.name)),
                    "defined twice",
                ));
            }
        }
        let routes = s
            .routes
            .iter()
            .map(Route::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut aliases = HashSet::new();
        for r in &routes {
            if !aliases.insert(r.alias.as_str()) {
                return Err(InvalidPolicy::new(
                    format!("route {}", quoted(&r.alias)),
                    "defined twice",
                ));
            }
            for t in &r.targets {
                if !names.contains(t.provider.as_str()) {
                    return Err(InvalidPolicy::new(
                        format!("route {}", quoted(&r.alias)),
                        format!(
                            "target {} names unknown provider {:?}",
                            quoted(&t.id()),
                            t.provider
                        ),
                    ));
                }
            }
        }
        let prices = s
            .prices
            .iter()
            .map(Price::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut models = HashSet::new();
        for p in &prices {
            if !models.insert(p.model.as_str()) {
                return Err(InvalidPolicy::new(
                    format!("price {}", quoted(&p.model)),
                    "defined twice",
                ));
            }
        }
        Ok(Snapshot {
            store_id: s.store_id.clone(),
            version: s.version,
            providers,
            routes,
            prices,
            modules: Modules::from_wire(&s.modules),
        })
    }
}

impl From<&Snapshot> for pb::Snapshot {
    fn from(s: &Snapshot) -> Self {
        pb::Snapshot {
            store_id: s.store_id.clone(),
            version: s.version,
            providers: s.providers.iter().map(Into::into).collect(),
            routes: s.routes.iter().map(Into::into).collect(),
            prices: s.prices.iter().map(Into::into).collect(),
            modules: s.modules.to_wire(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str) -> pb::Provider {
        pb::Provider {
            name: name.into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "https://api.openai.com/v1/".into(),
            credential: Some(pb::provider::Credential::ApiKeyEnv("OPENAI_API_KEY".into())),
            api_version: String::new(),
        }
    }

    fn azure(name: &str, api_version: &str) -> pb::Provider {
        pb::Provider {
            name: name.into(),
            kind: pb::ProviderKind::Azure as i32,
            base_url: "https://res.openai.azure.com".into(),
            credential: Some(pb::provider::Credential::ApiKeyEnv("AZURE_OPENAI_API_KEY".into())),
            api_version: api_version.into(),
        }
    }

    fn route(alias: &str, targets: &[(&str, &str)]) -> pb::Route {
        pb::Route {
            alias: alias.into(),
            strategy: 0,
            targets: targets
                .iter()
                .map(|(p, m)| pb::Target {
                    provider: (*p).into(),
                    model: (*m).into(),
                    weight: 0,
                })
                .collect(),
            cache_ttl_secs: 0,
            retry_after_send: false,
        }
    }

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            store_id: "s".into(),
            version: 3,
            providers: vec![provider("openai")],
            routes: vec![route("fast", &[("openai", "gpt-4o-mini")])],
            prices: vec![],
            modules: vec![pb::Module {
                name: "auth".into(),
                enabled: true,
                available: false,
            }],
        }
    }

    #[test]
    fn valid_snapshot_round_trips() {
        let s = Snapshot::try_from(&snapshot()).unwrap();
        assert_eq!(s.providers[0].base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(s.routes[0].targets[0].weight, 1);
        assert!(s.modules.is_enabled(Module::Auth));
        let back = pb::Snapshot::from(&s);
        assert_eq!(Snapshot::try_from(&back).unwrap(), s);
    }

    #[test]
    fn retry_after_send_is_off_unless_set_and_round_trips() {
        let s = Snapshot::try_from(&snapshot()).unwrap();
        assert!(!s.routes[0].retry_after_send, "off by default");
        let mut wire = snapshot();
        wire.routes[0].retry_after_send = true;
        let s = Snapshot::try_from(&wire).unwrap();
        assert!(s.routes[0].retry_after_send);
        assert!(pb::Snapshot::from(&s).routes[0].retry_after_send);
    }

    #[test]
    fn route_to_unknown_provider_is_rejected() {
        let mut s = snapshot();
        s.routes.push(route("x", &[("nope", "m")]));
        let err = Snapshot::try_from(&s).unwrap_err();
        assert!(err.to_string().contains("unknown provider \"nope\""), "{err}");
    }

    #[test]
    fn unknown_modules_stay_off() {
        let mut s = snapshot();
        s.modules.push(pb::Module {
            name: "telepathy".into(),
            enabled: true,
            available: true,
        });
        let s = Snapshot::try_from(&s).unwrap();
        for m in Module::ALL {
            assert_eq!(s.modules.is_enabled(m), m == Module::Auth);
        }
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases: Vec<(pb::Snapshot, &str)> = vec![
            (
                {
                    let mut s = snapshot();
                    s.providers[0].name = String::new();
                    s
                },
                "must not be empty",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].base_url = "ftp://x".into();
                    s
                },
                "scheme must be http",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].base_url = "not a url".into();
                    s
                },
                "is not a URL",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].kind = 0;
                    s
                },
                "kind is required",
            ),
            (
                {
                    let mut s = snapshot();
                    s.routes[0].targets.clear();
                    s
                },
                "at least one target",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers.push(provider("openai"));
                    s
                },
                "defined twice",
            ),
            (
                {
                    let mut s = snapshot();
                    s.prices.push(pb::Price {
                        model: "m".into(),
                        input_per_mtok: -1.0,
                        ..Default::default()
                    });
                    s
                },
                "is not a price",
            ),
            (
                {
                    let mut s = snapshot();
                    s.prices.push(pb::Price {
                        model: "m".into(),
                        input_per_mtok: f64::NAN,
                        ..Default::default()
                    });
                    s
                },
                "is not a price",
            ),
            (
                {
                    let mut s = snapshot();
                    s.version = 0;
                    s
                },
                "must not be 0",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].api_version = "2024-10-21".into();
                    s
                },
                "only azure providers take an api-version",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers.push(azure("az", "2024-10-21&x=1"));
                    s
                },
                "must be 1-64 of A-Z",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers
                        .push(azure("az", &"9".repeat(MAX_API_VERSION_LEN + 1)));
                    s
                },
                "must be 1-64 of A-Z",
            ),
        ];
        for (s, want) in cases {
            let err = Snapshot::try_from(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
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

    #[test]
    fn targets_parse_provider_and_model() {
        let t = Target::parse("vllm/meta-llama/Llama-3-8B").unwrap();
        assert_eq!(
            (t.provider.as_str(), t.model.as_str()),
            ("vllm", "meta-llama/Llama-3-8B")
        );
        assert!(Target::parse("no-slash").is_err());
        assert!(Target::parse("Bad/x").is_err());
        assert!(Target::parse("ok/").is_err());
    }

    #[test]
    fn quoting_cuts_huge_input() {
        assert_eq!(quoted("gpt"), "\"gpt\"");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let exact = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quoted(&exact), format!("{exact:?}"));
        let huge = "é".repeat(100_000);
        let q = quoted(&huge);
        assert!(q.len() < 200, "{q}");
        assert!(q.ends_with("... (200000 bytes)"), "{q}");
    }

    /// Every limit: the longest value passes, one byte more is refused, and the error quotes at
    /// most a short prefix of what it refused.
    #[test]
    fn every_limit_holds_and_errors_stay_short() {
        let longest = |n: usize| "a".repeat(n);
        let over = |n: usize| "a".repeat(n + 1);
        let short = |e: InvalidPolicy| {
            let text = e.to_string();
            assert!(text.len() < 400, "{} bytes: {text}", text.len());
            text
        };
        // Provider names: 64.
        assert_eq!(validate_provider_name(&longest(MAX_PROVIDER_NAME_LEN)), Ok(()));
        short(validate_provider_name(&over(MAX_PROVIDER_NAME_LEN)).unwrap_err());
        // Aliases and models: 256.
        assert_eq!(validate_model_name("model", &longest(MAX_NAME_LEN)), Ok(()));
        let text = short(validate_model_name("model", &over(100_000)).unwrap_err());
        assert!(text.contains("longer than 256 bytes"), "{text}");
        let mut r = pb::Route {
            alias: longest(MAX_NAME_LEN),
            strategy: 0,
            targets: vec![pb::Target {
                provider: "p".into(),
                model: longest(MAX_NAME_LEN),
                weight: 1,
            }],
            cache_ttl_secs: 0,
            retry_after_send: false,
        };
        assert!(Route::try_from(&r).is_ok());
        r.alias = over(50_000);
        short(Route::try_from(&r).unwrap_err());
        r.alias = "a".into();
        r.targets[0].model = over(MAX_NAME_LEN);
        short(Route::try_from(&r).unwrap_err());
        // Targets per route: 64.
        r.targets = (0..MAX_TARGETS)
            .map(|i| pb::Target {
                provider: "p".into(),
                model: format!("m{i}"),
                weight: 1,
            })
            .collect();
        assert!(Route::from_admin(&r).is_ok());
        r.targets.push(pb::Target {
            provider: "p".into(),
            model: "one-more".into(),
            weight: 1,
        });
        let text = short(Route::from_admin(&r).unwrap_err());
        assert_eq!(text, "route \"a\"/targets: at most 64 targets (got 65)");
        assert!(
            Route::try_from(&r).is_ok(),
            "a stored route over the admin limit still compiles in a snapshot"
        );
        // Env var names: 128.
        assert_eq!(validate_env_var(&longest(MAX_ENV_VAR_LEN)), Ok(()));
        short(validate_env_var(&over(MAX_ENV_VAR_LEN)).unwrap_err());
        // Base URLs: 2 KiB.
        let url = |len: usize| {
            format!(
                "https://h.example/{}",
                "p".repeat(len - "https://h.example/".len())
            )
        };
        assert!(parse_base_url(&url(MAX_BASE_URL_LEN)).is_ok());
        let text = short(parse_base_url(&url(MAX_BASE_URL_LEN + 1)).unwrap_err());
        assert!(text.contains("longer than 2048 bytes"), "{text}");
        // API keys: 8 KiB.
        let mut p = provider("p");
        p.credential = Some(pb::provider::Credential::ApiKey(longest(MAX_API_KEY_LEN)));
        assert!(Provider::try_from(&p).is_ok());
        p.credential = Some(pb::provider::Credential::ApiKey(over(MAX_API_KEY_LEN)));
        let text = short(Provider::try_from(&p).unwrap_err());
        assert!(!text.contains("aaaa"), "a key is never echoed: {text}");
        // api-version: 64.
        assert!(validate_api_version(&"1".repeat(MAX_API_VERSION_LEN)).is_ok());
        short(validate_api_version(&"1".repeat(100_000)).unwrap_err());
        // Price keys: a model of 256, or provider/model of 64 + 1 + 256.
        let key = format!("{}/{}", longest(MAX_PROVIDER_NAME_LEN), longest(MAX_NAME_LEN));
        assert_eq!(validate_price_key(&key), Ok(()));
        assert_eq!(key.len(), MAX_PRICE_KEY_LEN);
        short(validate_price_key(&format!("{key}a")).unwrap_err());
        short(validate_price_key(&over(MAX_NAME_LEN)).unwrap_err());
        short(validate_price_key(&format!("p/{}", over(MAX_NAME_LEN))).unwrap_err());
        short(validate_price_key(&format!("{}/m", over(100_000))).unwrap_err());
        // Other messages that quote their input.
        short(Target::parse(&over(100_000)).unwrap_err());
        short(Module::parse(&over(100_000)).unwrap_err());
        short(ProviderKind::parse(&over(100_000)).unwrap_err());
        short(Strategy::parse(&over(100_000)).unwrap_err());
    }

    #[test]
    fn target_models_must_not_steer_the_url_of_kinds_that_put_them_in_it() {
        for kind in ProviderKind::ALL {
            for &model in URL_STEERING_MODELS {
                assert!(!is_path_segment_model(model), "{model:?}");
                let result = validate_target_model(kind, "model", model);
                assert_eq!(result.is_ok(), !model_in_path(kind), "{kind} {model:?}");
            }
            for model in ["gpt-4o-mini", "gemini-2.5-flash", "my_deployment.v2"] {
                assert_eq!(
                    validate_target_model(kind, "model", model),
                    Ok(()),
                    "{kind} {model}"
                );
            }
            for model in ["a b", "a\u{0}", ""] {
                assert!(
                    validate_target_model(kind, "model", model).is_err(),
                    "{kind} {model:?}"
                );
            }
        }
        assert!(model_in_path(ProviderKind::Azure) && model_in_path(ProviderKind::Gemini));
        // Body-only kinds keep ids with '/' and ':'.
        assert_eq!(
            validate_target_model(ProviderKind::OpenAiCompatible, "model", "meta-llama/Llama-3-70b"),
            Ok(())
        );
        assert_eq!(
            validate_target_model(ProviderKind::OpenAiCompatible, "model", "llama3:8b"),
            Ok(())
        );
        let err = validate_target_model(ProviderKind::Gemini, "model", "m:x").unwrap_err();
        assert!(err.reason.contains("provider kind gemini"), "{err}");

        // In a snapshot such a target (a store written by an older version may hold one) is
        // left for the data plane to refuse per target: the rest of the snapshot stays usable.
        let mut s = snapshot();
        s.providers.push(azure("az", ""));
        s.routes.push(route("evil", &[("az", "../../x?evil=1")]));
        let valid = Snapshot::try_from(&s).unwrap();
        let evil = valid.routes.iter().find(|r| r.alias == "evil").unwrap();
        assert_eq!(evil.targets[0].model, "../../x?evil=1");
        // The rules every target model must meet still hold there.
        s.routes.push(route("worse", &[("az", "a b")]));
        let err = Snapshot::try_from(&s).unwrap_err();
        assert_eq!(err.field, "route \"worse\"/targets[0]/model", "{err}");
    }

    #[test]
    fn drover_settings_are_never_credential_references_on_the_admin_api() {
        let request = |var: &str| pb::AddProviderRequest {
            name: "p".into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "https://x.example/v1".into(),
            credential: Some(pb::add_provider_request::Credential::ApiKeyEnv(var.into())),
            replace: false,
            api_version: String::new(),
        };
        for var in [
            "DROVER_ADMIN_TOKEN",
            "DROVER_MASTER_KEY",
            "drover_dataplane_token",
            "Drover_X",
        ] {
            let err = Provider::try_from(&request(var)).unwrap_err();
            assert_eq!(err.field, "provider \"p\"/api_key_env", "{var}");
            assert!(
                err.reason.contains("one of Drover's own settings (DROVER_*)"),
                "{err}"
            );
        }
        assert!(Provider::try_from(&request("OPENAI_API_KEY")).is_ok());
        assert!(Provider::try_from(&request("DROVERX_API_KEY")).is_ok());
        // In a snapshot (an older store may hold one) it is left to the data plane to refuse.
        let mut p = provider("p");
        p.credential = Some(pb::provider::Credential::ApiKeyEnv("DROVER_ADMIN_TOKEN".into()));
        assert!(Provider::try_from(&p).is_ok());
    }

    #[test]
    fn modules_not_implemented_are_unavailable() {
        for m in Module::ALL {
            assert_eq!(m.is_available(), AVAILABLE_MODULES.contains(&m));
        }
        let wire = Modules::default().to_wire();
        assert_eq!(wire.len(), Module::ALL.len());
        assert!(
            wire.iter()
                .all(|m| m.available == Module::parse(&m.name).unwrap().is_available())
        );
    }

    #[test]
    fn unusable_target_reports_are_bounded() {
        let long = pb::UnusableTarget {
            route: "r".repeat(10_000),
            target: format!("p/{}", "m\n".repeat(10_000)),
            reason: "é".repeat(10_000),
        };
        let list = UnusableTarget::from_wire(&vec![long; MAX_UNAVAILABLE_REPORTED + 1]);
        assert_eq!(list.len(), MAX_UNAVAILABLE_REPORTED);
        assert_eq!(list[0].route.len(), MAX_NAME_LEN);
        assert_eq!(list[0].target.len(), MAX_REQUEST_MODEL_LEN);
        assert!(!list[0].target.contains('\n'));
        assert!(list[0].reason.len() <= MAX_UNAVAILABLE_REASON_LEN);
        assert_eq!(pb::UnusableTarget::from(&list[0]).target, list[0].target);
    }

    #[test]
    fn unavailable_provider_reports_are_bounded() {
        let long = pb::UnavailableProvider {
            provider: "p".repeat(1000),
            reason: format!("{}\n{}", "r".repeat(100), "é".repeat(1000)),
        };
        let list = UnavailableProvider::from_wire(&vec![long; MAX_UNAVAILABLE_REPORTED + 10]);
        assert_eq!(list.len(), MAX_UNAVAILABLE_REPORTED);
        assert_eq!(list[0].provider.len(), MAX_PROVIDER_NAME_LEN);
        assert!(list[0].reason.len() <= MAX_UNAVAILABLE_REASON_LEN);
        assert!(!list[0].reason.contains('\n'));
        let back = pb::UnavailableProvider::from(&list[0]);
        assert_eq!(back.reason, list[0].reason);
    }

    #[test]
    fn secrets_never_print() {
        let c = Credential::Key(Secret::new("sk-very-secret"));
        assert!(!format!("{c:?}").contains("sk-very"));
        assert_eq!(c.describe(), "stored");
    }
}

/// One metered request, as a data plane reports it and the control plane stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageRecord {
    /// Unique per request; the idempotency key of the ledger.
    pub request_id: String,
    pub time_unix_ms: i64,
    pub tenant: String,
    pub key_id: String,
    pub alias: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
    /// nano-USD.
    pub cost_nano_usd: i64,
    pub latency_ms: u32,
    pub ttft_ms: u32,
    pub status: u16,
    pub cache_hit: bool,
    pub saved_nano_usd: i64,
    pub policy_version: u64,
    pub unpriced: bool,
    pub stream: bool,
    pub endpoint: String,
    pub failed: bool,
}

pub use crate::limits::{MAX_REQUEST_ID_LEN, MAX_USAGE_NANO_USD, MAX_USAGE_TIME_UNIX_MS, MAX_USAGE_TOKENS};

impl UsageRecord {
    /// Whether the ledger accepts this record: an id of 1-128 bytes, costs and token counts
    /// within their bounds, a time between 1970 and the year 10000, an HTTP status.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.request_id.is_empty() || self.request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(InvalidPolicy::new(
                "request_id",
                format!("must be 1-{MAX_REQUEST_ID_LEN} bytes"),
            ));
        }
        let within = || format!("usage {:?}", self.request_id);
        if self.cost_nano_usd < 0 || self.saved_nano_usd < 0 {
            return Err(InvalidPolicy::new(within(), "cost must not be negative"));
        }
        if self.cost_nano_usd > MAX_USAGE_NANO_USD || self.saved_nano_usd > MAX_USAGE_NANO_USD {
            return Err(InvalidPolicy::new(
                within(),
                format!("cost must be at most {MAX_USAGE_NANO_USD} nano-USD"),
            ));
        }
        let tokens = [
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.cache_creation_tokens,
            self.reasoning_tokens,
        ];
        if tokens.iter().any(|&t| t > MAX_USAGE_TOKENS) {
            return Err(InvalidPolicy::new(
                within(),
                format!("token counts must be at most {MAX_USAGE_TOKENS}"),
            ));
        }
        if !(0..MAX_USAGE_TIME_UNIX_MS).contains(&self.time_unix_ms) {
            return Err(InvalidPolicy::new(
                within(),
                format!(
                    "time {} ms is not between 1970 and the year 10000",
                    self.time_unix_ms
                ),
            ));
        }
        if i64::try_from(self.policy_version).is_err() {
            return Err(InvalidPolicy::new(within(), "policy version out of range"));
        }
        if !(100..=599).contains(&self.status) {
            return Err(InvalidPolicy::new(within(), "status is not an HTTP status"));
        }
        Ok(())
    }
}

impl TryFrom<pb::UsageRecord> for UsageRecord {
    type Error = InvalidPolicy;

    /// Takes the record's strings over (no copies) and validates it.
    fn try_from(r: pb::UsageRecord) -> Result<Self, InvalidPolicy> {
        let record = UsageRecord {
            // Out of range: refused by `validate` as any other non-HTTP status.
            status: u16::try_from(r.status).unwrap_or(0),
            request_id: r.request_id,
            time_unix_ms: r.time_unix_ms,
            tenant: r.tenant,
            key_id: r.key_id,
            alias: r.alias,
            provider: r.provider,
            model: r.model,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cache_creation_tokens: r.cache_creation_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_nano_usd: r.cost_nano_usd,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            cache_hit: r.cache_hit,
            saved_nano_usd: r.saved_nano_usd,
            policy_version: r.policy_version,
            unpriced: r.unpriced,
            stream: r.stream,
            endpoint: r.endpoint,
            failed: r.failed,
        };
        record.validate()?;
        Ok(record)
    }
}

impl From<UsageRecord> for pb::UsageRecord {
    fn from(r: UsageRecord) -> Self {
        pb::UsageRecord {
            request_id: r.request_id,
            time_unix_ms: r.time_unix_ms,
            tenant: r.tenant,
            key_id: r.key_id,
            alias: r.alias,
            provider: r.provider,
            model: r.model,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cost_nano_usd: r.cost_nano_usd,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            status: u32::from(r.status),
            cache_hit: r.cache_hit,
            saved_nano_usd: r.saved_nano_usd,
            policy_version: r.policy_version,
            unpriced: r.unpriced,
            stream: r.stream,
            endpoint: r.endpoint,
            failed: r.failed,
            cache_creation_tokens: r.cache_creation_tokens,
            reasoning_tokens: r.reasoning_tokens,
        }
    }
}

/// Cost in nano-USD of `tokens` at `usd_per_mtok` (USD per million tokens): 1 USD per
/// million tokens is 1,000 nano-USD per token.
pub fn cost_nano_usd(tokens: u64, usd_per_mtok: f64) -> i64 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let nano = (tokens as f64 * usd_per_mtok * 1000.0).round() as i64;
    nano.max(0)
}

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// A calendar day in UTC (proleptic Gregorian), as days since 1970-01-01. Displays and parses
/// as `YYYY-MM-DD`; usage is rolled up and grouped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDay(pub i64);

impl UtcDay {
    /// The day a Unix time in milliseconds falls on.
    pub fn of_unix_ms(ms: i64) -> Self {
        UtcDay(ms.div_euclid(MS_PER_DAY))
    }

    /// Midnight at the start of the day, Unix milliseconds (saturating).
    pub fn start_unix_ms(self) -> i64 {
        self.0.saturating_mul(MS_PER_DAY)
    }

    /// The day of a calendar date, or `None` if the date does not exist (e.g. February 30).
    pub fn from_ymd(year: i64, month: u32, day: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(UtcDay(era * 146_097 + doe - 719_468))
    }

    /// Year, month (1-12) and day of the month (1-31).
    pub fn ymd(self) -> (i64, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (year, month as u32, day as u32)
    }

    /// Parses `YYYY-MM-DD` (four-digit year).
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let digits = |range: std::ops::Range<usize>| -> Option<u32> {
            let part = text.get(range)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        UtcDay::from_ymd(i64::from(digits(0..4)?), digits(5..7)?, digits(8..10)?)
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

impl fmt::Display for UtcDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    fn record() -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: "req-1".into(),
            time_unix_ms: 1_764_000_000_000,
            status: 200,
            input_tokens: 10,
            output_tokens: 5,
            cost_nano_usd: 1234,
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_record_round_trips() {
        let r = UsageRecord::try_from(record()).unwrap();
        assert_eq!(pb::UsageRecord::from(r), record());
    }

    #[test]
    fn records_out_of_bounds_are_refused() {
        type Change = Box<dyn Fn(&mut pb::UsageRecord)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.request_id.clear()), "request_id"),
            (
                Box::new(|r| r.request_id = "x".repeat(MAX_REQUEST_ID_LEN + 1)),
                "request_id",
            ),
            (Box::new(|r| r.cost_nano_usd = -1), "negative"),
            (Box::new(|r| r.saved_nano_usd = -1), "negative"),
            (Box::new(|r| r.cost_nano_usd = MAX_USAGE_NANO_USD + 1), "at most"),
            (
                Box::new(|r| r.input_tokens = MAX_USAGE_TOKENS + 1),
                "token counts",
            ),
            (Box::new(|r| r.reasoning_tokens = u64::MAX), "token counts"),
            (Box::new(|r| r.time_unix_ms = -1), "between 1970"),
            (
                Box::new(|r| r.time_unix_ms = MAX_USAGE_TIME_UNIX_MS),
                "between 1970",
            ),
            (Box::new(|r| r.policy_version = u64::MAX), "policy version"),
            (Box::new(|r| r.status = 0), "HTTP status"),
            (Box::new(|r| r.status = 70_000), "HTTP status"),
        ];
        for (change, want) in cases {
            let mut r = record();
            change(&mut r);
            let err = UsageRecord::try_from(r).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let mut edge = record();
        edge.time_unix_ms = MAX_USAGE_TIME_UNIX_MS - 1;
        edge.input_tokens = MAX_USAGE_TOKENS;
        edge.cost_nano_usd = MAX_USAGE_NANO_USD;
        assert!(UsageRecord::try_from(edge).is_ok());
    }

    #[test]
    fn utc_days_convert_both_ways() {
        let cases = [
            (0, "1970-01-01"),
            (MS_PER_DAY - 1, "1970-01-01"),
            (MS_PER_DAY, "1970-01-02"),
            (951_782_400_000, "2000-02-29"),
            (1_764_028_800_000, "2025-11-25"),
            (MAX_USAGE_TIME_UNIX_MS - 1, "9999-12-31"),
            (-1, "1969-12-31"),
        ];
        for (ms, text) in cases {
            let day = UtcDay::of_unix_ms(ms);
            assert_eq!(day.to_string(), text, "{ms}");
            assert_eq!(UtcDay::parse(text), Some(day), "{text}");
        }
        assert_eq!(
            UtcDay::of_unix_ms(MAX_USAGE_TIME_UNIX_MS).to_string(),
            "10000-01-01"
        );
        // Every day of four centuries round-trips and follows the one before.
        let mut previous = UtcDay::parse("1999-12-31").unwrap();
        for _ in 0..146_097 {
            let day = UtcDay(previous.0 + 1);
            let (y, m, d) = day.ymd();
            assert_eq!(UtcDay::from_ymd(y, m, d), Some(day));
            assert!(day.to_string() > previous.to_string() || y >= 10_000);
            previous = day;
        }
        for bad in [
            "2025-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-1-01",
            "20251-01-0",
            "2025/01/01",
            "+025-01-01",
            "2025-01-32",
        ] {
            assert_eq!(UtcDay::parse(bad), None, "{bad}");
        }
        assert!(UtcDay::parse("2024-02-29").is_some());
    }

    #[test]
    fn price_keys_are_models_or_provider_slash_model() {
        for good in [
            "gpt-4o",
            "groq/llama-3.3-70b-versatile",
            "vllm/Qwen/Qwen2.5-7B",
            "meta-llama/Llama-3-8B",
        ] {
            assert_eq!(validate_price_key(good), Ok(()), "{good}");
        }
        for (bad, want) in [
            ("Qwen/Qwen2.5-7B", "names a provider"),
            ("/gpt-4o", "names a provider"),
            ("groq/", "must follow"),
            ("", "must not be empty"),
            ("gpt 4o", "whitespace"),
        ] {
            let err = validate_price_key(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        let err = Price::try_from(&pb::Price {
            model: "Qwen/Qwen2.5-7B".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("vllm/Qwen/Qwen2.5-7B"), "{err}");
    }
}
