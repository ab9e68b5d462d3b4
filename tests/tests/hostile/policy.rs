//! Hostile admin input and policies: names that try to steer the upstream URL, credential
//! references that reach for secrets, snapshots that must not freeze a data plane.

use std::sync::Arc;

use drover_dataplane::EnvLookup;
use drover_proto::model::{MAX_TARGETS, URL_STEERING_MODELS, is_path_segment_model};
use drover_proto::pb;
use drover_tests::gateway::{Reply, metric, route, rss_bytes};
use drover_tests::{Gateway, MockProvider, chat_body};
use tonic::Code;

/// Names a caller may put after `provider/` to steer the upstream: paths, queries, fragments,
/// method suffixes, escapes, raw bytes (`URL_STEERING_MODELS`), whitespace and control characters.
fn hostile<'a>() -> impl Iterator<Item = &'a str> {
    URL_STEERING_MODELS
        .iter()
        .copied()
        .chain(["a b", "a\nb", "a\u{0}b", "\u{7f}"])
}

/// Names every kind must carry as they are (a safe path segment for the kinds that put the
/// model in the URL).
const SAFE: &[&str] = &["gpt-4o-mini", "Model_1.5-x"];

/// What a provider of one kind must receive for a model name.
struct Kind {
    kind: pb::ProviderKind,
    mock: fn() -> drover_tests::mock::MockBuilder,
    /// The path and query the upstream must see for an accepted `model`.
    expect: fn(&str) -> (String, Option<String>),
    /// Whether the JSON body carries the model (checked to be exactly the name).
    model_in_body: bool,
    /// Whether the model goes into the URL path (so it must be one safe segment).
    in_path: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        kind: pb::ProviderKind::Openai,
        mock: MockProvider::openai,
        expect: |_| ("/v1/chat/completions".into(), None),
        model_in_body: true,
        in_path: false,
    },
    Kind {
        kind: pb::ProviderKind::OpenaiCompatible,
        mock: MockProvider::openai,
        expect: |_| ("/v1/chat/completions".into(), None),
        model_in_body: true,
        in_path: false,
    },
    Kind {
        kind: pb::ProviderKind::Anthropic,
        mock: MockProvider::anthropic,
        expect: |_| ("/v1/messages".into(), None),
        model_in_body: true,
        in_path: false,
    },
    Kind {
        kind: pb::ProviderKind::Azure,
        mock: MockProvider::azure,
        expect: |m| {
            (
                format!("/openai/deployments/{m}/chat/completions"),
                Some("api-version=2024-10-21".into()),
            )
        },
        model_in_body: false,
        in_path: true,
    },
    Kind {
        kind: pb::ProviderKind::Gemini,
        mock: MockProvider::gemini,
        expect: |m| (format!("/v1beta/models/{m}:generateContent"), None),
        model_in_body: false,
        in_path: true,
    },
];

/// A 400 about `model` in the caller's format, that does not echo a long name back.
fn assert_model_refused(reply: &Reply, anthropic: bool, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.text());
    let body = reply.json();
    if anthropic {
        assert_eq!(body["type"], "error", "{what}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}: {body}");
    } else {
        assert_eq!(body["error"]["type"], "invalid_request_error", "{what}: {body}");
        assert_eq!(body["error"]["param"], "model", "{what}: {body}");
    }
    assert!(reply.body.len() < 1024, "{what}: {} bytes", reply.body.len());
}

#[tokio::test]
async fn callers_never_steer_the_upstream_url_whatever_the_provider_kind() {
    let gw = Gateway::builder().start().await;
    let mut mocks = Vec::new();
    for (i, k) in KINDS.iter().enumerate() {
        let up = (k.mock)().start().await;
        gw.provider_kind(&format!("p{i}"), k.kind, &up.base_url()).await;
        mocks.push(up);
    }
    let long = "x".repeat(10_000);
    for (i, k) in KINDS.iter().enumerate() {
        let up = &mocks[i];
        let in_path = k.in_path;
        for name in hostile().chain(SAFE.iter().copied()).chain([long.as_str()]) {
            let direct = format!("p{i}/{name}");
            let what = format!("{:?} {name:?}", k.kind);
            let refused = name.chars().any(|c| c.is_whitespace() || c.is_control())
                || name.len() > 256
                || (in_path && !is_path_segment_model(name));
            for anthropic in [false, true] {
                up.clear_requests();
                let reply = if anthropic {
                    gw.message(&direct, "hi", false).await
                } else {
                    gw.chat(&direct, "hi").await
                };
                let what = format!(
                    "{what} via {}",
                    if anthropic {
                        "/v1/messages"
                    } else {
                        "/v1/chat/completions"
                    }
                );
                if refused {
                    assert_model_refused(&reply, anthropic, &what);
                    assert_eq!(up.calls(), 0, "{what}: refused names never go upstream");
                    continue;
                }
                let sent = up.requests();
                assert_eq!(sent.len(), 1, "{what}: {}", reply.text());
                let (path, query) = (k.expect)(name);
                assert_eq!((&sent[0].path, &sent[0].query), (&path, &query), "{what}");
                if k.model_in_body {
                    assert_eq!(sent[0].json().unwrap()["model"], *name, "{what}");
                }
            }
        }
    }

    // The same names are refused as route targets of the kinds that put the model in the URL,
    // with a message that does not echo huge input.
    let mut admin = gw.admin.clone();
    let before = gw.version().await;
    for (i, k) in KINDS.iter().enumerate() {
        for name in hostile().chain([long.as_str()]) {
            let result = admin
                .set_route(pb::SetRouteRequest {
                    route: Some(pb::Route {
                        targets: vec![pb::Target {
                            provider: format!("p{i}"),
                            model: name.into(),
                            weight: 1,
                        }],
                        ..route("steer", &[])
                    }),
                })
                .await;
            let path_kind = k.in_path;
            let bad_anywhere = name.chars().any(|c| c.is_whitespace() || c.is_control()) || name.len() > 256;
            if path_kind || bad_anywhere {
                let err = result.expect_err(name);
                assert_eq!(err.code(), Code::InvalidArgument, "{:?} {name:?}", k.kind);
                assert!(err.message().len() < 400, "{} bytes", err.message().len());
            } else {
                // Body-only kinds carry any other name in the JSON body; undo it.
                result.unwrap();
                admin
                    .remove_route(pb::RemoveRouteRequest {
                        alias: "steer".into(),
                    })
                    .await
                    .unwrap();
            }
        }
    }
    let after = gw.version().await;
    gw.wait_all(after).await;
    assert!(after >= before);
    let routes = admin
        .list_routes(pb::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(routes.routes.is_empty());
}

/// Targets whose health the data plane remembers (`drover_target_health_entries`, route and
/// direct together).
async fn health_entries(gw: &Gateway) -> u64 {
    let metrics = gw.metrics().await;
    metric(&metrics, "drover_target_health_entries{kind=\"route\"}")
        + metric(&metrics, "drover_target_health_entries{kind=\"direct\"}")
}

/// Sends `n` chat requests with unique direct names `p/{prefix}{i}`, 32 at a time, and returns
/// how many got each status.
async fn unique_names(
    gw: &Gateway,
    up: &MockProvider,
    prefix: &str,
    from: usize,
    n: usize,
) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for batch in (from..from + n).collect::<Vec<_>>().chunks(32) {
        let replies = futures_util::future::join_all(batch.iter().map(|i| {
            gw.send(
                "POST",
                "/v1/chat/completions",
                chat_body(&format!("p/{prefix}{i}"), "x", false),
            )
        }))
        .await;
        for reply in replies {
            match reply.status.as_u16() {
                200 => ok += 1,
                400 => refused += 1,
                other => panic!("unexpected {other}: {}", reply.text()),
            }
        }
        // The mock remembers every request; forget them so that only the gateway is measured.
        up.clear_requests();
    }
    (ok, refused)
}

/// A gateway whose data plane keeps no usage for the control plane (so the ledger's page cache
/// does not grow in this process either), with provider `p`.
async fn lean_gateway(up: &MockProvider) -> Gateway {
    let gw = Gateway::builder()
        .configure(|c| c.usage.report = false)
        .start()
        .await;
    gw.provider("p", &up.base_url()).await;
    gw
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn unique_direct_names_hold_bounded_state() {
    let up = MockProvider::openai().start().await;
    let gw = lean_gateway(&up).await;
    let name = "m".repeat(240);
    // Warm up: pools, buffers, and the bounded health cache filled.
    assert_eq!(unique_names(&gw, &up, &name, 0, 2_000).await, (2_000, 0));
    let before = rss_bytes();
    assert_eq!(unique_names(&gw, &up, &name, 2_000, 10_000).await, (10_000, 0));
    let grown = rss_bytes().saturating_sub(before);
    let entries = health_entries(&gw).await;
    assert!(
        entries <= drover_dataplane::MAX_DIRECT_TARGETS,
        "{entries} targets remembered"
    );
    assert!(
        grown < 8 * MIB,
        "10,000 unique names grew RSS by {} KiB",
        grown / 1024
    );
}

#[tokio::test]
async fn unique_long_direct_names_are_refused_and_hold_nothing() {
    let up = MockProvider::openai().start().await;
    let gw = lean_gateway(&up).await;
    let name = "m".repeat(10 * 1024);
    assert_eq!(unique_names(&gw, &up, &name, 0, 1_000).await, (0, 1_000));
    let before = rss_bytes();
    assert_eq!(unique_names(&gw, &up, &name, 1_000, 10_000).await, (0, 10_000));
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(up.calls(), 0);
    assert_eq!(health_entries(&gw).await, 0);
    assert!(
        grown < 8 * MIB,
        "10,000 unique names grew RSS by {} KiB",
        grown / 1024
    );
}

/// The environment the data plane resolves `env:VAR` references in: the harness's key, one of
/// Drover's own secrets, and a secret that is not meant for any provider.
fn environment() -> EnvLookup {
    Arc::new(|var: &str| match var {
        "TEST_PROVIDER_API_KEY" => Some("sk-test-provider-key".to_owned()),
        "DROVER_ADMIN_TOKEN" => Some("test-admin-token".to_owned()),
        "SSH_AUTH_SECRET" => Some("ssh-secret-value".to_owned()),
        _ => None,
    })
}

/// Adds an OpenAI-compatible provider whose credential is env `env`, as the admin API answers.
async fn add_provider(gw: &Gateway, name: &str, base_url: &str, env: &str) -> Result<u64, tonic::Status> {
    gw.try_provider(name, pb::ProviderKind::OpenaiCompatible, base_url, env)
        .await
}

async fn unavailable(gw: &Gateway) -> Vec<(String, String)> {
    gw.status().await.dataplanes[0]
        .unavailable_providers
        .iter()
        .map(|u| (u.provider.clone(), u.reason.clone()))
        .collect()
}

/// Polls Status until the data plane reports `want` as its unavailable providers.
async fn await_unavailable(gw: &Gateway, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want.iter().map(|(p, r)| ((*p).into(), (*r).into())).collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = unavailable(gw).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status shows {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn credential_references_cannot_reach_drover_secrets_or_unlisted_variables() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| c.env = environment())
        .start()
        .await;
    let before = gw.version().await;

    // The admin API refuses Drover's own settings outright.
    let err = add_provider(&gw, "thief", &up.base_url(), "DROVER_ADMIN_TOKEN")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("DROVER_ADMIN_TOKEN is one of Drover's own settings"),
        "{}",
        err.message()
    );
    assert_eq!(gw.version().await, before);

    // A variable outside the data plane's allow-list (default *_API_KEY) is never read: the
    // provider is unavailable, and nothing is sent to its URL.
    let v = add_provider(&gw, "thief", &up.base_url(), "SSH_AUTH_SECRET")
        .await
        .unwrap();
    gw.wait_all(v).await;
    let reason = "environment variable SSH_AUTH_SECRET is not allowed by this data plane's --credential-env-allow (*_API_KEY)";
    await_unavailable(&gw, &[("thief", reason)]).await;
    let reply = gw.chat("thief/m", "hi").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "provider_unavailable");
    assert_eq!(
        reply.json()["error"]["message"],
        format!("provider `thief` is unavailable on this gateway: {reason}")
    );
    assert!(!reply.text().contains("ssh-secret-value"));
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn the_credential_allow_list_is_the_data_planes_to_set() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(|c| {
            c.env = environment();
            c.credential_env_allow = drover_dataplane::EnvAllowList::parse("SSH_AUTH_SECRET").unwrap();
        })
        .start()
        .await;
    let v = add_provider(&gw, "listed", &up.base_url(), "SSH_AUTH_SECRET")
        .await
        .unwrap();
    gw.wait_all(v).await;
    let v = add_provider(&gw, "unlisted", &up.base_url(), "TEST_PROVIDER_API_KEY")
        .await
        .unwrap();
    gw.wait_all(v).await;
    await_unavailable(
        &gw,
        &[(
            "unlisted",
            "environment variable TEST_PROVIDER_API_KEY is not allowed by this data plane's \
             --credential-env-allow (SSH_AUTH_SECRET)",
        )],
    )
    .await;
    assert_eq!(gw.chat("listed/m", "hi").await.status, 200);
    assert_eq!(
        up.last_request().unwrap().header("authorization"),
        Some("Bearer ssh-secret-value")
    );
    assert_eq!(gw.chat("unlisted/m", "hi").await.status, 503);
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn a_provider_whose_key_cannot_be_resolved_does_not_freeze_the_policy() {
    let good = MockProvider::openai().start().await;
    let bad = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("good", &good.base_url()).await;

    // The snapshot with an unresolvable provider is applied (the harness waits for the data
    // plane to serve its version), not NACKed.
    let v = add_provider(&gw, "bad", &bad.base_url(), "MISSING_API_KEY")
        .await
        .unwrap();
    gw.wait_all(v).await;
    let reason = "environment variable MISSING_API_KEY is not set on this data plane";
    await_unavailable(&gw, &[("bad", reason)]).await;
    let status = gw.status().await;
    assert_eq!(status.dataplanes[0].last_error, "");
    assert_eq!(status.dataplanes[0].served_version, v);

    // Later updates keep flowing.
    gw.route("both", &["bad/m", "good/m"]).await;
    gw.route("only-bad", &["bad/m"]).await;

    // Other providers work; failover skips the unavailable one; requests that need it get a
    // 503 naming it, in the caller's format.
    assert_eq!(gw.chat("good/m", "hi").await.status, 200);
    let reply = gw.chat("both", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-provider"), Some("good"));
    let message = format!("provider `bad` is unavailable on this gateway: {reason}");
    for model in ["bad/m", "only-bad"] {
        let reply = gw.chat(model, "hi").await;
        assert_eq!(reply.status, 503, "{model}: {}", reply.text());
        assert_eq!(reply.json()["error"]["message"], message, "{model}");
        let reply = gw.message(model, "hi", false).await;
        assert_eq!(reply.status, 503, "{model}: {}", reply.text());
        assert_eq!(reply.json()["type"], "error");
        assert_eq!(reply.json()["error"]["message"], message, "{model}");
    }
    assert_eq!(bad.calls(), 0);

    // Once its key is resolvable, it is back.
    let v = add_provider(&gw, "bad", &bad.base_url(), "TEST_PROVIDER_API_KEY")
        .await
        .unwrap();
    gw.wait_all(v).await;
    await_unavailable(&gw, &[]).await;
    assert_eq!(gw.chat("only-bad", "hi").await.status, 200);
    assert_eq!(bad.calls(), 1);
}

#[tokio::test]
async fn a_huge_route_is_refused_with_a_short_message() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("p", &up.base_url()).await;
    let before = gw.version().await;
    let target = |i: usize| pb::Target {
        provider: "p".into(),
        model: format!("m{i}"),
        weight: 1,
    };
    let mut admin = gw.admin.clone();
    let huge = |targets: Vec<pb::Target>| pb::SetRouteRequest {
        route: Some(pb::Route {
            targets,
            ..route("huge", &[])
        }),
    };
    let err = admin
        .set_route(huge((0..100_000).map(target).collect()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "route \"huge\"/targets: at most 64 targets (got 100000)"
    );
    let err = admin
        .set_route(huge(vec![pb::Target {
            model: "m".repeat(1 << 20),
            ..target(0)
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 300, "{} bytes", err.message().len());
    // Beyond any valid request, it is not even decoded.
    let err = admin
        .set_route(huge(vec![pb::Target {
            model: "m".repeat(20 << 20),
            ..target(0)
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert_eq!(gw.version().await, before, "nothing changed");
    // The longest route accepted is served.
    let v = admin
        .set_route(huge((0..MAX_TARGETS).map(target).collect()))
        .await
        .unwrap()
        .into_inner()
        .version;
    gw.wait_all(v).await;
    assert_eq!(gw.chat("huge", "hi").await.status, 200);
}

/// A route target an older version stored, whose model the rules now refuse for its
/// provider's kind (an Azure deployment or Gemini model with a `/`), must not make every
/// snapshot invalid: the data plane leaves that target unusable, reports it, and serves the
/// rest, and later changes keep reaching it.
#[tokio::test]
async fn a_stored_target_the_rules_now_refuse_does_not_freeze_the_policy() {
    let az = MockProvider::azure().start().await;
    let mut gw = Gateway::builder().start().await;
    gw.provider_kind("az", pb::ProviderKind::Azure, &az.base_url())
        .await;
    gw.route("good", &["az/dep"]).await;

    // Rows as an older version wrote them, straight into the database.
    gw.cp.kill().await;
    let conn = rusqlite::Connection::open(gw.dir.path().join("drover.db")).unwrap();
    conn.execute_batch(
        "INSERT INTO routes (alias, strategy) VALUES ('legacy', 'fallback'), ('mixed', 'fallback');
         INSERT INTO route_targets (alias, position, provider, model, weight) VALUES
             ('legacy', 0, 'az', 'team/gpt-4o', 1),
             ('mixed', 0, 'az', 'team/gpt-4o', 1),
             ('mixed', 1, 'az', 'dep', 1);",
    )
    .unwrap();
    drop(conn);
    gw.cp.restart().await;
    gw.admin = gw.cp.admin().await;

    // The next change is applied (a NACK would leave the data plane at the old version).
    let v = gw.route("after", &["az/dep-2"]).await;
    let why = "\"team/gpt-4o\" cannot be used with provider kind azure: the model goes into the \
               request URL, so it must be 1-256 of A-Z, a-z, 0-9, '.', '_' and '-' (and not \".\" or \"..\")";
    let status = gw.status().await;
    let dp = &status.dataplanes[0];
    assert_eq!((dp.served_version, dp.last_error.as_str()), (v, ""));
    // It reports the targets it never sends.
    let reported: Vec<_> = dp
        .unusable_targets
        .iter()
        .map(|u| (u.route.as_str(), u.target.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(
        reported,
        [
            ("legacy", "az/team/gpt-4o", why),
            ("mixed", "az/team/gpt-4o", why)
        ]
    );
    assert_eq!(gw.metric("drover_route_targets_unusable").await, 2);

    // Everything else is served; failover skips the target; a route with no other gets a 503
    // that says why, in the caller's format, and nothing reaches the provider's URL.
    az.clear_requests();
    for alias in ["good", "after", "mixed"] {
        assert_eq!(gw.chat(alias, "hi").await.status, 200, "{alias}");
    }
    let paths: Vec<_> = az.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/openai/deployments/dep/chat/completions",
            "/openai/deployments/dep-2/chat/completions",
            "/openai/deployments/dep/chat/completions",
        ]
    );
    let message = format!("route target `az/team/gpt-4o` cannot be used: {why}");
    let reply = gw.chat("legacy", "hi").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "target_unusable");
    assert_eq!(reply.json()["error"]["message"], message);
    let reply = gw.message("legacy", "hi", false).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"]["type"], "api_error");
    assert_eq!(reply.json()["error"]["message"], message);
    assert_eq!(gw.chat("az/team/gpt-4o", "hi").await.status, 400);
    assert_eq!(az.calls(), 3);

    // The admin API still lists it (so it can be fixed), refuses to write it again, and once
    // it is changed the report is empty.
    let mut admin = gw.admin.clone();
    let routes = admin
        .list_routes(pb::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner()
        .routes;
    let legacy = routes.into_iter().find(|r| r.alias == "legacy").unwrap();
    let err = admin
        .set_route(pb::SetRouteRequest { route: Some(legacy) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains(why), "{}", err.message());
    gw.route("legacy", &["az/dep"]).await;
    let v = gw.route("mixed", &["az/dep"]).await;
    let status = gw.status().await;
    assert_eq!(status.dataplanes[0].served_version, v);
    assert!(status.dataplanes[0].unusable_targets.is_empty());
    assert_eq!(gw.chat("legacy", "hi").await.status, 200);
}
