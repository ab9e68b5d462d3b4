//! The admin API refuses bad input and bad tokens without changing anything, and what it
//! accepts reaches the data plane.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use drover_proto::pb;
use drover_tests::gateway::admin_client;
use drover_tests::{Gateway, MockProvider};
use tonic::Code;

async fn state(
    gw: &Gateway,
) -> (
    u64,
    Vec<pb::ProviderInfo>,
    Vec<pb::Route>,
    Vec<pb::Price>,
    Vec<pb::Module>,
) {
    let mut a = gw.admin.clone();
    (
        gw.version().await,
        a.list_providers(pb::ListProvidersRequest {})
            .await
            .unwrap()
            .into_inner()
            .providers,
        a.list_routes(pb::ListRoutesRequest {})
            .await
            .unwrap()
            .into_inner()
            .routes,
        a.list_prices(pb::ListPricesRequest {})
            .await
            .unwrap()
            .into_inner()
            .prices,
        a.list_modules(pb::ListModulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .modules,
    )
}

fn provider(name: &str, url: &str) -> pb::AddProviderRequest {
    pb::AddProviderRequest {
        name: name.into(),
        kind: pb::ProviderKind::Openai as i32,
        base_url: url.into(),
        credential: None,
        replace: false,
        api_version: String::new(),
        responses_api: 0,
    }
}

fn route(alias: &str, provider: &str) -> pb::SetRouteRequest {
    pb::SetRouteRequest {
        route: Some(pb::Route {
            alias: alias.into(),
            strategy: 0,
            targets: vec![pb::Target {
                provider: provider.into(),
                model: "m".into(),
                weight: 0,
            }],
            cache_ttl_secs: 0,
            retry_after_send: false,
        }),
    }
}

#[tokio::test]
async fn invalid_admin_input_is_refused_and_changes_nothing() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/one"]).await;
    let before = state(&gw).await;
    let dp_version = gw.dps[0].version();
    let mut a = gw.admin.clone();

    let cases: Vec<(tonic::Status, &str)> = vec![
        (
            a.set_route(route("x", "ghost")).await.unwrap_err(),
            "unknown provider",
        ),
        (
            a.add_provider(provider("new", "not a url")).await.unwrap_err(),
            "base_url",
        ),
        (
            a.add_provider(provider("new", "ftp://example.com"))
                .await
                .unwrap_err(),
            "scheme",
        ),
        (
            a.add_provider(provider("", "https://example.com"))
                .await
                .unwrap_err(),
            "must not be empty",
        ),
        (
            a.add_provider(provider("Bad Name", "https://example.com"))
                .await
                .unwrap_err(),
            "provider name",
        ),
        (
            a.set_price(pb::SetPriceRequest {
                price: Some(pb::Price {
                    model: "gpt".into(),
                    input_per_mtok: -1.0,
                    output_per_mtok: 1.0,
                    cached_input_per_mtok: None,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err(),
            "not a price",
        ),
        (
            a.set_route(pb::SetRouteRequest {
                route: Some(pb::Route {
                    alias: String::new(),
                    strategy: 0,
                    targets: vec![],
                    cache_ttl_secs: 0,
                    retry_after_send: false,
                }),
            })
            .await
            .unwrap_err(),
            "alias",
        ),
        (
            a.set_module(pb::SetModuleRequest {
                name: "telepathy".into(),
                enabled: true,
            })
            .await
            .unwrap_err(),
            "unknown module",
        ),
    ];
    for (status, want) in &cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(want),
            "{:?} should mention {want:?}",
            status.message()
        );
    }

    let err = a
        .add_provider(provider("up", "https://example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = a
        .remove_provider(pb::RemoveProviderRequest { name: "up".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "a route still uses it");
    assert!(err.message().contains('m'));
    let err = a
        .remove_route(pb::RemoveRouteRequest {
            alias: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    assert_eq!(state(&gw).await, before, "nothing changed");
    assert_eq!(gw.dps[0].version(), dp_version, "no new snapshot");
}

#[tokio::test]
async fn a_bad_or_missing_token_is_unauthenticated_and_changes_nothing() {
    let gw = Gateway::builder().start().await;
    let before = state(&gw).await;
    for token in ["wrong", "", "test-admin-token-plus", "test-dataplane-token"] {
        let mut a = admin_client(gw.cp.addr(), token).await;
        let err = a
            .add_provider(provider("sneaky", "https://example.com"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "token {token:?}");
        assert!(!err.message().contains("test-admin-token"), "never echo a token");
        let err = a
            .set_module(pb::SetModuleRequest {
                name: "auth".into(),
                enabled: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(
            a.list_providers(pb::ListProvidersRequest {})
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }
    assert_eq!(state(&gw).await, before);
}

#[tokio::test]
async fn unavailable_modules_cannot_be_switched_on_and_stored_keys_never_come_back() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    let mut a = gw.admin.clone();
    let added = a
        .add_provider(pb::AddProviderRequest {
            name: "keyed".into(),
            kind: pb::ProviderKind::OpenaiCompatible as i32,
            base_url: up.base_url(),
            credential: Some(pb::add_provider_request::Credential::ApiKey(
                "sk-stored-secret".into(),
            )),
            replace: false,
            api_version: String::new(),
            responses_api: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.provider.unwrap().credential, "stored");
    gw.wait_all(added.version).await;
    let listed = format!(
        "{:?}",
        a.list_providers(pb::ListProvidersRequest {})
            .await
            .unwrap()
            .into_inner()
    );
    assert!(!listed.contains("sk-stored-secret"));

    // The stored key is decrypted for the data plane and sent upstream.
    assert_eq!(gw.chat("keyed/m", "x").await.status, 200);
    assert_eq!(
        up.last_request().unwrap().header("authorization"),
        Some("Bearer sk-stored-secret")
    );

    // A module this version does not implement: switching it on is refused and changes
    // nothing; switching it off is allowed.
    let before = gw.version().await;
    let err = a
        .set_module(pb::SetModuleRequest {
            name: "audit".into(),
            enabled: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .starts_with("module audit is not available in this version of Drover"),
        "{}",
        err.message()
    );
    let off = a
        .set_module(pb::SetModuleRequest {
            name: "audit".into(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        off.module.unwrap(),
        pb::Module {
            name: "audit".into(),
            enabled: false,
            available: false,
        }
    );
    assert_eq!(off.version, before, "already off: nothing changed");
    assert_eq!(gw.version().await, before);
    let modules = a
        .list_modules(pb::ListModulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .modules;
    assert!(
        modules
            .iter()
            .all(|m| !m.enabled
                && m.available == ["auth", "rate_limit", "spend_cap"].contains(&m.name.as_str())),
        "{modules:?}"
    );
    assert_eq!(modules.len(), 5);
}
