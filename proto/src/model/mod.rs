//! Validated domain types for Drover's policy, and their conversions from and to the wire.
//!
//! Every `TryFrom<pb::…>` here validates, so code that holds a `model` value never re-checks
//! it. The same rules serve the admin API (invalid input is refused before anything is
//! written) and the data plane (an invalid snapshot is NACKed), except for a target model its
//! provider's kind cannot carry: the admin API refuses it, a data plane only leaves that target
//! unusable (see [`Snapshot`]).

mod credential;
mod error;
mod key;
mod limit;
mod modules;
mod names;
mod price;
mod provider;
mod reports;
mod route;
mod snapshot;
mod tenant;
#[cfg(test)]
mod test_support;
mod usage;

pub use credential::{
    Credential, MAX_API_KEY_LEN, MAX_ENV_VAR_LEN, RESERVED_ENV_PREFIX, Secret, is_reserved_env_var,
    validate_credential_env, validate_env_var,
};
pub use error::{InvalidPolicy, MAX_QUOTED_CHARS, quoted};
pub use key::{
    Digest, KEY_ID_BODY_LEN, KEY_ID_PREFIX, MAX_EXPIRES_UNIX_MS, MAX_GRACE_SECS, MAX_KEY_MODELS,
    MAX_KEY_NAME_LEN, MAX_REQUEST_ID_CHARS, SECRET_BODY_LEN, SECRET_PREFIX, SHOWN_SECRET_LEN, VirtualKey,
    is_secret_shaped, validate_expiry, validate_key_id, validate_key_models, validate_key_name,
    validate_request_id,
};
pub use limit::{
    Cap, CapPeriod, Limits, MAX_CAP_NANO_USD, MAX_CONCURRENCY_LIMIT, MAX_RATE_LIMIT, OnCpLoss,
    caps_from_wire, validate_cap_amount, validate_concurrency_limit, validate_rate_limit, validate_soft_at,
};
pub use modules::{AVAILABLE_MODULES, Module, Modules};
pub use names::{
    MAX_NAME_LEN, MAX_PROVIDER_NAME_LEN, MAX_REQUEST_MODEL_LEN, URL_STEERING_MODELS, is_path_segment_model,
    model_in_path, validate_model_name, validate_name, validate_provider_name, validate_target_model,
};
pub use price::{MAX_PRICE_KEY_LEN, MAX_PRICE_PER_MTOK, Price, validate_price_key};
pub use provider::{
    DEFAULT_AZURE_API_VERSION, MAX_API_VERSION_LEN, MAX_BASE_URL_LEN, Provider, ProviderKind, ResponsesApi,
    parse_base_url, validate_api_version,
};
pub use reports::{
    MAX_UNAVAILABLE_REASON_LEN, MAX_UNAVAILABLE_REPORTED, UnavailableProvider, UnusableTarget,
};
pub use route::{MAX_CACHE_TTL_SECS, MAX_TARGETS, MAX_WEIGHT, Route, Strategy, Target};
pub use snapshot::Snapshot;
pub use tenant::{
    Labels, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, MAX_TENANT_NAME_LEN, Tenant, validate_label,
    validate_labels, validate_tenant_name,
};
pub use usage::{
    MAX_REQUEST_ID_LEN, MAX_USAGE_NANO_USD, MAX_USAGE_TIME_UNIX_MS, MAX_USAGE_TOKENS, MS_PER_DAY,
    UsageRecord, UtcDay, cost_nano_usd, now_unix_ms,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::provider;
    use crate::pb;

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
}
