//! The admin API end to end: what it stores, lists and streams, what it refuses (changing nothing),
//! and that it answers the admin token only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use drover_controlplane::master_key_file_for;
use drover_proto::pb;
use tonic::{Code, Request};

use common::*;

#[tokio::test]
async fn admin_api_round_trip_never_returns_a_stored_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    assert_eq!(version(&mut client).await, 1);

    let added = client
        .add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.version, 2);
    assert_eq!(added.provider.unwrap().credential, "stored");
    let mut env = add_provider("anthropic");
    env.kind = pb::ProviderKind::Anthropic as i32;
    env.credential = Some(pb::add_provider_request::Credential::ApiKeyEnv(
        "ANTHROPIC_API_KEY".into(),
    ));
    client.add_provider(authed(env, ADMIN)).await.unwrap();

    let listed = client
        .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    let creds: Vec<_> = listed
        .providers
        .iter()
        .map(|p| (p.name.as_str(), p.credential.as_str()))
        .collect();
    assert_eq!(
        creds,
        [("anthropic", "env:ANTHROPIC_API_KEY"), ("openai", "stored")]
    );
    assert!(!format!("{listed:?}").contains(PLAINTEXT_KEY));

    let route = client
        .set_route(authed(set_route("fast", "openai"), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((route.version, route.route.unwrap().targets[0].weight), (4, 1));
    let routes = client
        .list_routes(authed(pb::ListRoutesRequest {}, ADMIN))
        .await
        .unwrap();
    assert_eq!(routes.into_inner().routes[0].alias, "fast");

    let price = pb::Price {
        model: "my-model".into(),
        input_per_mtok: 0.15,
        output_per_mtok: 0.6,
        cached_input_per_mtok: None,
        source: String::new(),
    };
    let set = client
        .set_price(authed(
            pb::SetPriceRequest {
                price: Some(price.clone()),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    assert_eq!(set.into_inner().version, 5);
    let prices = client
        .list_prices(authed(pb::ListPricesRequest {}, ADMIN))
        .await
        .unwrap();
    let listed = prices.into_inner().prices;
    let mine: Vec<_> = listed.iter().filter(|p| p.source == "custom").collect();
    assert_eq!(
        mine,
        [&pb::Price {
            source: "custom".into(),
            ..price
        }]
    );
    assert!(
        listed
            .iter()
            .any(|p| p.model == "gpt-4o-mini" && p.source == "default")
    );

    // A module not implemented in this version: switching it on is refused and changes
    // nothing; switching it off is allowed.
    let err = client
        .set_module(authed(set_module("redact", true), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "module redact is not available in this version of Drover: its flag would be recorded \
         and distributed but change nothing on the request path, so it cannot be enabled"
    );
    let module = client
        .set_module(authed(set_module("redact", false), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        module.module.unwrap(),
        pb::Module {
            name: "redact".into(),
            enabled: false,
            available: false,
        }
    );
    assert_eq!(module.version, 5, "it was off already");
    let modules = client
        .list_modules(authed(pb::ListModulesRequest {}, ADMIN))
        .await
        .unwrap();
    let modules: Vec<_> = modules
        .into_inner()
        .modules
        .into_iter()
        .map(|m| (m.name, m.enabled, m.available))
        .collect();
    assert_eq!(modules.len(), 5);
    assert!(modules.contains(&("redact".into(), false, false)));
    assert!(modules.contains(&("rate_limit".into(), false, true)));
    assert!(modules.contains(&("auth".into(), false, true)));
    let changed = client
        .set_price(authed(set_price("other-model", 2.0), ADMIN))
        .await
        .unwrap();
    assert_eq!(changed.into_inner().version, 6);

    // Removing a provider a route uses is refused, naming the route.
    let err = client
        .remove_provider(authed(
            pb::RemoveProviderRequest {
                name: "openai".into(),
            },
            ADMIN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("\"fast\""), "{}", err.message());
    let err = client
        .remove_route(authed(pb::RemoveRouteRequest { alias: "nope".into() }, ADMIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(version(&mut client).await, 6);

    client
        .remove_route(authed(pb::RemoveRouteRequest { alias: "fast".into() }, ADMIN))
        .await
        .unwrap();
    let removed = client
        .remove_provider(authed(
            pb::RemoveProviderRequest {
                name: "openai".into(),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    assert_eq!(removed.into_inner().version, 8);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn an_azure_api_version_is_listed_and_streamed_and_refused_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    assert_eq!(watcher.next().await.version, 1);

    let mut azure = add_provider("azure");
    azure.kind = pb::ProviderKind::Azure as i32;
    azure.base_url = "https://res.openai.azure.com".into();
    azure.credential = Some(pb::add_provider_request::Credential::ApiKeyEnv(
        "AZURE_OPENAI_API_KEY".into(),
    ));
    azure.api_version = "2024-10-21".into();
    let added = client
        .add_provider(authed(azure, ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.version, 2);
    assert_eq!(added.provider.unwrap().api_version, "2024-10-21");
    client
        .add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap();

    let listed = client
        .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<_> = listed
        .providers
        .iter()
        .map(|p| (p.name.as_str(), p.api_version.as_str()))
        .collect();
    assert_eq!(versions, [("azure", "2024-10-21"), ("openai", "")]);

    let snapshot = watcher.next().await;
    let snapshot = if snapshot.version == 2 {
        watcher.next().await
    } else {
        snapshot
    };
    assert_eq!(snapshot.version, 3);
    let streamed: Vec<_> = snapshot
        .providers
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.api_version.as_str()))
        .collect();
    assert_eq!(
        streamed,
        [
            ("azure", pb::ProviderKind::Azure as i32, "2024-10-21"),
            ("openai", pb::ProviderKind::Openai as i32, ""),
        ]
    );

    // On any other kind it is refused, and nothing is written.
    let mut versioned = add_provider("openai");
    versioned.replace = true;
    versioned.api_version = "2024-10-21".into();
    let err = client.add_provider(authed(versioned, ADMIN)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("provider \"openai\"/api_version: only azure providers take an api-version"),
        "{}",
        err.message()
    );
    assert_eq!(version(&mut client).await, 3);
    let again = client
        .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, listed);
    drop(watcher);
    stop(cp, shutdown).await;
}

/// How a provider gets Responses API calls: listed and streamed as set, refused for kinds
/// that are always translated to, and for values the wire does not know.
#[tokio::test]
async fn a_responses_setting_is_listed_and_streamed_and_refused_where_it_means_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    assert_eq!(watcher.next().await.version, 1);

    let mut vllm = add_provider("vllm");
    vllm.kind = pb::ProviderKind::OpenaiCompatible as i32;
    vllm.responses_api = pb::ResponsesApi::Relay as i32;
    let added = client
        .add_provider(authed(vllm, ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        added.provider.unwrap().responses_api,
        pb::ResponsesApi::Relay as i32
    );
    let snapshot = watcher.next().await;
    assert_eq!(snapshot.version, 2);
    assert_eq!(
        snapshot.providers[0].responses_api,
        pb::ResponsesApi::Relay as i32
    );

    for (kind, value, want) in [
        (
            pb::ProviderKind::Anthropic,
            pb::ResponsesApi::Relay as i32,
            "provider \"claude\"/responses_api: anthropic providers always get Responses calls translated",
        ),
        (
            pb::ProviderKind::Openai,
            7,
            "provider \"claude\"/responses_api: unknown mode 7",
        ),
    ] {
        let mut bad = add_provider("claude");
        bad.kind = kind as i32;
        bad.responses_api = value;
        let err = client.add_provider(authed(bad, ADMIN)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(want), "{}", err.message());
    }
    assert_eq!(version(&mut client).await, 2, "nothing was written");
    drop(watcher);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn stored_keys_are_not_in_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    client
        .add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap();
    // The data plane gets the key back, decrypted.
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    let snapshot = watcher.next().await;
    assert_eq!(
        snapshot.providers[0].credential,
        Some(pb::provider::Credential::ApiKey(PLAINTEXT_KEY.into()))
    );
    drop(watcher);
    stop(cp, shutdown).await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(PLAINTEXT_KEY.len())
                .any(|w| w == PLAINTEXT_KEY.as_bytes())
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key_file = master_key_file_for(&dir.path().join("drover.db"));
        let mode = std::fs::metadata(key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn invalid_admin_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    client
        .add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap();
    let before = version(&mut client).await;

    let mut bad_url = add_provider("other");
    bad_url.base_url = "ftp://example.com".into();
    let mut empty_name = add_provider("");
    empty_name.name = String::new();
    let mut versioned_openai = add_provider("other");
    versioned_openai.api_version = "2024-10-21".into();
    let negative = pb::SetPriceRequest {
        price: Some(pb::Price {
            model: "gpt-4o".into(),
            input_per_mtok: -1.0,
            output_per_mtok: 1.0,
            cached_input_per_mtok: None,
            source: String::new(),
        }),
    };
    let results = [
        (
            "route to an unknown provider",
            client
                .set_route(authed(set_route("fast", "nope"), ADMIN))
                .await
                .map(|_| ()),
            "unknown provider \"nope\"",
        ),
        (
            "bad url",
            client.add_provider(authed(bad_url, ADMIN)).await.map(|_| ()),
            "scheme must be http",
        ),
        (
            "empty name",
            client.add_provider(authed(empty_name, ADMIN)).await.map(|_| ()),
            "must not be empty",
        ),
        (
            "api version on a non-azure provider",
            client
                .add_provider(authed(versioned_openai, ADMIN))
                .await
                .map(|_| ()),
            "api_version: only azure providers take an api-version",
        ),
        (
            "negative price",
            client.set_price(authed(negative, ADMIN)).await.map(|_| ()),
            "is not a price",
        ),
        (
            "unknown module",
            client
                .set_module(authed(set_module("telepathy", true), ADMIN))
                .await
                .map(|_| ()),
            "unknown module",
        ),
        (
            "missing route",
            client
                .set_route(authed(pb::SetRouteRequest { route: None }, ADMIN))
                .await
                .map(|_| ()),
            "route",
        ),
    ];
    for (case, result, message) in results {
        let err = result.expect_err(case);
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert!(err.message().contains(message), "{case}: {}", err.message());
    }
    assert_eq!(version(&mut client).await, before);
    let routes = client
        .list_routes(authed(pb::ListRoutesRequest {}, ADMIN))
        .await
        .unwrap();
    assert!(routes.into_inner().routes.is_empty());
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn route_targets_cannot_steer_provider_urls_and_drover_settings_are_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut az = add_provider("az");
    az.kind = pb::ProviderKind::Azure as i32;
    az.base_url = "https://res.openai.azure.com".into();
    client.add_provider(authed(az, ADMIN)).await.unwrap();
    let mut vllm = add_provider("vllm");
    vllm.kind = pb::ProviderKind::OpenaiCompatible as i32;
    client.add_provider(authed(vllm.clone(), ADMIN)).await.unwrap();
    let route = |alias: &str, provider: &str, model: &str| {
        let mut r = set_route(alias, provider);
        if let Some(route) = r.route.as_mut() {
            route.targets[0].model = model.into();
        }
        authed(r, ADMIN)
    };
    // Body-only kinds take ids with '/' and ':'.
    client
        .set_route(route("llama", "vllm", "meta-llama/Llama-3-70b"))
        .await
        .unwrap();
    client
        .set_route(route("tagged", "vllm", "llama3:8b"))
        .await
        .unwrap();
    let before = version(&mut client).await;

    for &model in drover_proto::model::URL_STEERING_MODELS {
        let err = client.set_route(route("evil", "az", model)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{model:?}");
        assert!(
            err.message().starts_with("route \"evil\"/targets[0]/model: ")
                && err.message().contains("cannot be used with provider kind azure")
                && err.message().ends_with("(provider \"az\")"),
            "{model:?}: {}",
            err.message()
        );
    }
    let huge = "x".repeat(200_000);
    let err = client.set_route(route(&huge, "vllm", "m")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{} bytes", err.message().len());

    // Replacing a provider by one of a kind that cannot carry its routes' models is refused.
    let mut as_azure = vllm;
    as_azure.kind = pb::ProviderKind::Azure as i32;
    as_azure.replace = true;
    let err = client.add_provider(authed(as_azure, ADMIN)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with(
            "provider \"vllm\"/kind: route \"llama\" targets this provider with a model it cannot carry: \
             \"meta-llama/Llama-3-70b\" cannot be used with provider kind azure"
        ),
        "{}",
        err.message()
    );

    // Drover's own settings are never a credential reference.
    for var in [
        "DROVER_ADMIN_TOKEN",
        "DROVER_MASTER_KEY",
        "drover_dataplane_token",
    ] {
        let mut greedy = add_provider("greedy");
        greedy.credential = Some(pb::add_provider_request::Credential::ApiKeyEnv(var.into()));
        let err = client.add_provider(authed(greedy, ADMIN)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(&format!(
                "provider \"greedy\"/api_key_env: {var} is one of Drover's own settings (DROVER_*)"
            )),
            "{}",
            err.message()
        );
    }
    assert_eq!(version(&mut client).await, before, "nothing changed");
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthenticated_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let attempts = [
        Request::new(add_provider("openai")),
        authed(add_provider("openai"), "wrong"),
        authed(add_provider("openai"), DATAPLANE),
        authed(add_provider("openai"), &format!("{ADMIN}x")),
    ];
    for attempt in attempts {
        let err = client.add_provider(attempt).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "missing or invalid admin token");
    }
    let err = client
        .status(Request::new(pb::StatusRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(version(&mut client).await, 1);
    let listed = client
        .list_providers(authed(pb::ListProvidersRequest {}, ADMIN))
        .await
        .unwrap();
    assert!(listed.into_inner().providers.is_empty());

    // The policy stream takes the data plane token or the admin token, nothing else.
    let err = Watcher::try_open(&cp, "wrong", "dp-1", None).await.err().unwrap();
    assert_eq!(err.code(), Code::Unauthenticated);
    Watcher::open(&cp, DATAPLANE, "dp-1", None).await.next().await;
    Watcher::open(&cp, ADMIN, "dp-2", None).await.next().await;
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn prices_have_defaults_overrides_and_removal_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    let first = watcher.next().await;
    let streamed = |s: &pb::Snapshot, key: &str| s.prices.iter().find(|p| p.model == key).cloned();
    let default = streamed(&first, "claude-sonnet-4-5").expect("defaults are in the snapshot");
    assert_eq!((default.input_per_mtok, default.output_per_mtok), (3.0, 15.0));
    assert_eq!(default.source, "", "snapshots carry no source");

    let set = |model: &str, input: f64| pb::SetPriceRequest {
        price: Some(pb::Price {
            model: model.into(),
            input_per_mtok: input,
            output_per_mtok: 1.0,
            ..Default::default()
        }),
    };
    let answer = client
        .set_price(authed(set("claude-sonnet-4-5", 2.0), ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.price.unwrap().source, "custom");
    client
        .set_price(authed(set("bedrock/claude-sonnet-4-5", 3.3), ADMIN))
        .await
        .unwrap();
    let err = client
        .set_price(authed(set("Bedrock/claude-sonnet-4-5", 3.3), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("names a provider"), "{}", err.message());

    let mut snapshot = watcher.next().await;
    while snapshot.version < 3 {
        snapshot = watcher.next().await;
    }
    assert_eq!(
        streamed(&snapshot, "claude-sonnet-4-5").unwrap().input_per_mtok,
        2.0
    );
    assert_eq!(
        streamed(&snapshot, "bedrock/claude-sonnet-4-5")
            .unwrap()
            .input_per_mtok,
        3.3
    );

    let listed = client
        .list_prices(authed(pb::ListPricesRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner()
        .prices;
    let source = |key: &str| listed.iter().find(|p| p.model == key).map(|p| p.source.clone());
    assert_eq!(source("claude-sonnet-4-5").as_deref(), Some("custom"));
    assert_eq!(source("bedrock/claude-sonnet-4-5").as_deref(), Some("custom"));
    assert_eq!(source("gpt-5").as_deref(), Some("default"));

    let remove = |model: &str| pb::RemovePriceRequest { model: model.into() };
    client
        .remove_price(authed(remove("claude-sonnet-4-5"), ADMIN))
        .await
        .unwrap();
    let snapshot = watcher.next().await;
    assert_eq!(streamed(&snapshot, "claude-sonnet-4-5"), Some(default));
    let err = client
        .remove_price(authed(remove("claude-sonnet-4-5"), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("can be overridden") && err.message().contains("not removed"),
        "{}",
        err.message()
    );
    drop(watcher);
    stop(cp, shutdown).await;
}
