//! Wire values the tests of every resource start from.

use crate::pb;

pub(super) fn provider(name: &str) -> pb::Provider {
    pb::Provider {
        name: name.into(),
        kind: pb::ProviderKind::Openai as i32,
        base_url: "https://api.openai.com/v1/".into(),
        credential: Some(pb::provider::Credential::ApiKeyEnv("OPENAI_API_KEY".into())),
        api_version: String::new(),
        responses_api: 0,
    }
}

pub(super) fn azure(name: &str, api_version: &str) -> pb::Provider {
    pb::Provider {
        name: name.into(),
        kind: pb::ProviderKind::Azure as i32,
        base_url: "https://res.openai.azure.com".into(),
        credential: Some(pb::provider::Credential::ApiKeyEnv("AZURE_OPENAI_API_KEY".into())),
        api_version: api_version.into(),
        responses_api: 0,
    }
}

pub(super) fn route(alias: &str, targets: &[(&str, &str)]) -> pb::Route {
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

pub(super) fn snapshot() -> pb::Snapshot {
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
        ..Default::default()
    }
}
