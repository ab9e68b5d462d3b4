//! Where a provider's API key comes from, and which environment variables may hold one.

use std::fmt;

use super::{InvalidPolicy, quoted};

/// Longest environment variable name accepted as a credential reference, bytes.
pub const MAX_ENV_VAR_LEN: usize = 128;
/// Longest stored API key accepted, bytes.
pub const MAX_API_KEY_LEN: usize = 8192;
/// Environment variables with this prefix (any case) are Drover's own settings, tokens and keys
/// among them: never a provider credential, whatever a data plane's allow-list says.
pub const RESERVED_ENV_PREFIX: &str = "DROVER_";

/// Whether `var` is one of Drover's own settings ([`RESERVED_ENV_PREFIX`], any case).
pub fn is_reserved_env_var(var: &str) -> bool {
    var.get(..RESERVED_ENV_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_ENV_PREFIX))
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

    pub(super) fn from_wire(env: Option<&str>, key: Option<&str>) -> Result<Self, InvalidPolicy> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provider;
    use crate::model::test_support::provider;
    use crate::pb;

    #[test]
    fn drover_settings_are_never_credential_references_on_the_admin_api() {
        let request = |var: &str| pb::AddProviderRequest {
            name: "p".into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "https://x.example/v1".into(),
            credential: Some(pb::add_provider_request::Credential::ApiKeyEnv(var.into())),
            replace: false,
            api_version: String::new(),
            responses_api: 0,
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
    fn secrets_never_print() {
        let c = Credential::Key(Secret::new("sk-very-secret"));
        assert!(!format!("{c:?}").contains("sk-very"));
        assert_eq!(c.describe(), "stored");
    }
}
