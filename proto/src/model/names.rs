//! Names every resource shares: provider names, aliases and model names, and which model names
//! may go into a request URL.

use super::{InvalidPolicy, ProviderKind, quoted};

/// Longest provider name accepted, bytes.
pub const MAX_PROVIDER_NAME_LEN: usize = 64;
/// Longest alias or model name accepted, bytes (route aliases, target models, the model part of a
/// price key, data plane ids).
pub const MAX_NAME_LEN: usize = 256;
/// Longest `model` a caller may send, bytes: a direct `provider/model` name at its longest.
pub const MAX_REQUEST_MODEL_LEN: usize = MAX_PROVIDER_NAME_LEN + 1 + MAX_NAME_LEN;

/// Checks a provider name: 1–64 of `[a-z0-9_-]`, starting with a letter.
pub fn validate_provider_name(name: &str) -> Result<(), InvalidPolicy> {
    validate_slug("name", "provider name", name, MAX_PROVIDER_NAME_LEN)
}

/// Checks a name made for URLs and command lines (providers, tenants): 1–`max_len` of
/// `[a-z0-9_-]`, starting with a letter. `what` names it in the error, e.g. `provider name`.
pub(crate) fn validate_slug(
    field: &str,
    what: &str,
    name: &str,
    max_len: usize,
) -> Result<(), InvalidPolicy> {
    if name.is_empty() {
        return Err(InvalidPolicy::new(field, format!("{what} must not be empty")));
    }
    let ok = name.len() <= max_len
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            field,
            format!(
                "{what} {} must be 1-{max_len} of a-z, 0-9, '-' and '_', starting with a letter",
                quoted(name)
            ),
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use crate::model::test_support::{azure, route, snapshot};

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
}
