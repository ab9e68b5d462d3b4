//! Resolving a provider's credential on this data plane.
//!
//! A stored key comes in the snapshot. An `env:VAR` reference is read from this data plane's
//! environment, but only when `VAR` matches the allow-list the data plane was started with
//! (`--credential-env-allow`, default `*_API_KEY`) and is not one of Drover's own settings
//! (`DROVER_*`, refused whatever the list says): whoever can add a provider chooses both the
//! variable and the URL its value is sent to, so the data plane decides which variables may
//! leave it. A credential that cannot be resolved makes its provider unavailable, with a reason
//! that names the variable, never its value.

use std::fmt;

use drover_proto::model::{Credential, RESERVED_ENV_PREFIX, is_reserved_env_var};

use super::EnvLookup;

/// The default `--credential-env-allow`: variables named like API keys.
pub const DEFAULT_CREDENTIAL_ENV_ALLOW: &str = "*_API_KEY";

/// Which environment variables may be resolved as provider credentials: a list of patterns
/// where `*` matches any run of characters (none included) and everything else matches itself.
/// An empty list allows none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvAllowList {
    patterns: Vec<String>,
}

/// Why an allow-list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a variable name pattern (letters, digits, '_' and '*')")]
pub struct BadPattern(pub String);

impl EnvAllowList {
    /// Parses comma-separated patterns, e.g. `*_API_KEY,OLLAMA_TOKEN`. Blank items are ignored,
    /// so an empty string allows nothing.
    pub fn parse(list: &str) -> Result<Self, BadPattern> {
        let mut patterns = Vec::new();
        for item in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !item
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'*')
            {
                return Err(BadPattern(item.chars().take(64).collect()));
            }
            patterns.push(item.to_owned());
        }
        Ok(EnvAllowList { patterns })
    }

    /// Whether `var` matches one of the patterns.
    pub fn allows(&self, var: &str) -> bool {
        self.patterns.iter().any(|p| glob(p.as_bytes(), var.as_bytes()))
    }
}

impl Default for EnvAllowList {
    fn default() -> Self {
        EnvAllowList {
            patterns: vec![DEFAULT_CREDENTIAL_ENV_ALLOW.to_owned()],
        }
    }
}

impl fmt::Display for EnvAllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.patterns.join(","))
    }
}

/// `*`-only wildcard matching (iterative, linear backtracking on the last `*`).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The key of `credential`, or why this data plane cannot have it (`None`: no credential).
pub fn resolve(
    credential: &Credential,
    env: &EnvLookup,
    allow: &EnvAllowList,
) -> Result<Option<String>, String> {
    match credential {
        Credential::None => Ok(None),
        Credential::Key(k) => Ok(Some(k.expose().to_owned())),
        Credential::Env(var) if is_reserved_env_var(var) => Err(format!(
            "environment variable {var} is one of Drover's own settings ({RESERVED_ENV_PREFIX}*) and is never \
             sent to a provider"
        )),
        Credential::Env(var) if !allow.allows(var) => Err(format!(
            "environment variable {var} is not allowed by this data plane's --credential-env-allow ({})",
            if allow.patterns.is_empty() {
                "empty".to_owned()
            } else {
                allow.to_string()
            }
        )),
        Credential::Env(var) => env(var)
            .filter(|v| !v.is_empty())
            .map(Some)
            .ok_or_else(|| format!("environment variable {var} is not set on this data plane")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use drover_proto::model::Secret;

    use super::*;

    #[test]
    fn patterns_match_whole_names_with_stars() {
        let list = EnvAllowList::parse(" *_API_KEY , OLLAMA_TOKEN,A*B*C ,").unwrap();
        for yes in [
            "OPENAI_API_KEY",
            "_API_KEY",
            "X_API_KEY",
            "OLLAMA_TOKEN",
            "ABC",
            "AxxBxxC",
            "ABBC",
        ] {
            assert!(list.allows(yes), "{yes}");
        }
        for no in [
            "OPENAI_API_KEYS",
            "API_KEY",
            "openai_api_key",
            "OLLAMA_TOKEN2",
            "AB",
            "ACB",
            "",
        ] {
            assert!(!list.allows(no), "{no}");
        }
        assert_eq!(list.to_string(), "*_API_KEY,OLLAMA_TOKEN,A*B*C");
        assert!(EnvAllowList::parse("*").unwrap().allows("ANYTHING"));
        let none = EnvAllowList::parse("").unwrap();
        assert!(!none.allows("OPENAI_API_KEY"));
        assert!(EnvAllowList::default().allows("GROQ_API_KEY"));
        assert!(!EnvAllowList::default().allows("HOME"));
        for bad in ["OPENAI-KEY", "A?", "$HOME", "A B"] {
            assert!(EnvAllowList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_resolve_only_when_allowed_and_never_drover_settings() {
        let env: EnvLookup = Arc::new(|var: &str| match var {
            "OPENAI_API_KEY" | "DROVER_ADMIN_TOKEN" | "DROVER_X_API_KEY" | "HOME" => {
                Some(format!("value-of-{var}"))
            }
            "EMPTY_API_KEY" => Some(String::new()),
            _ => None,
        });
        let everything = EnvAllowList::parse("*").unwrap();
        let default = EnvAllowList::default();
        let var = |v: &str| Credential::Env(v.to_owned());
        assert_eq!(
            resolve(&var("OPENAI_API_KEY"), &env, &default),
            Ok(Some("value-of-OPENAI_API_KEY".to_owned()))
        );
        assert_eq!(resolve(&Credential::None, &env, &default), Ok(None));
        assert_eq!(
            resolve(&Credential::Key(Secret::new("sk")), &env, &default),
            Ok(Some("sk".to_owned()))
        );
        let cases = [
            (
                "HOME",
                &default,
                "not allowed by this data plane's --credential-env-allow (*_API_KEY)",
            ),
            ("DROVER_ADMIN_TOKEN", &everything, "one of Drover's own settings"),
            ("DROVER_X_API_KEY", &default, "one of Drover's own settings"),
            ("drover_x_api_key", &everything, "one of Drover's own settings"),
            (
                "MISSING_API_KEY",
                &default,
                "MISSING_API_KEY is not set on this data plane",
            ),
            ("EMPTY_API_KEY", &default, "is not set"),
        ];
        for (name, allow, want) in cases {
            let err = resolve(&var(name), &env, allow).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
            assert!(!err.contains("value-of"), "never the value: {err}");
        }
    }
}
