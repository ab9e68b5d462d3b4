//! Tenants and virtual keys on the request path (the `auth` module): who may call, what they
//! may use, how they are attributed, and that all of it follows the control plane at runtime.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drover_proto::pb;
use drover_tests::{Gateway, MockProvider, chat_body};

async fn chat_with(gw: &Gateway, base: &str, model: &str, headers: &[(&str, &str)]) -> drover_tests::Reply {
    gw.send_to(
        base,
        "POST",
        "/v1/chat/completions",
        headers,
        chat_body(model, "hi", false),
    )
    .await
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

async fn gateway_with_route(up: &MockProvider, dataplanes: usize) -> Gateway {
    let gw = Gateway::builder().dataplanes(dataplanes).start().await;
    gw.provider("up", &up.base_url()).await;
    let v = gw.route("m", &["up/one"]).await;
    gw.route("other", &["up/two"]).await;
    gw.wait_all(v + 1).await;
    gw
}

#[tokio::test]
async fn with_auth_off_a_valid_key_is_attributed_and_a_wrong_one_ignored() {
    let up = MockProvider::openai().start().await;
    let gw = gateway_with_route(&up, 1).await;
    gw.tenant("acme").await;
    let key = gw.key("acme", &[]).await;

    let auth = bearer(&key.secret);
    assert_eq!(
        chat_with(&gw, &gw.url(), "m", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let wrong = format!("drv_{}", "x".repeat(43));
    let wrong = bearer(&wrong);
    assert_eq!(
        chat_with(&gw, &gw.url(), "m", &[("authorization", &wrong)])
            .await
            .status,
        200
    );
    assert_eq!(chat_with(&gw, &gw.url(), "m", &[]).await.status, 200);
    // Nothing is refused while auth is off, not even by a key's allow-list.
    let limited = gw.key("acme", &["m"]).await;
    let limited = bearer(&limited.secret);
    assert_eq!(
        chat_with(&gw, &gw.url(), "other", &[("authorization", &limited)])
            .await
            .status,
        200
    );

    gw.wait_for_usage(4).await;
    let by_key = gw
        .admin
        .clone()
        .query_usage(pb::UsageQuery {
            group_by: pb::UsageGroupBy::Key as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let key_id = key.key.unwrap().id;
    let requests = |group: &str| {
        by_key
            .rows
            .iter()
            .find(|r| r.group == group)
            .map_or(0, |r| r.requests)
    };
    assert_eq!(requests(&key_id), 1, "{by_key:?}");
    assert_eq!(by_key.total.as_ref().unwrap().requests, 4);
    assert_eq!(
        requests(""),
        2,
        "the wrong key and no key are anonymous: {by_key:?}"
    );
    let acme = gw
        .admin
        .clone()
        .query_usage(pb::UsageQuery {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme.total.unwrap().requests, 2);
}

#[tokio::test]
async fn with_auth_on_every_request_needs_a_usable_key_in_the_callers_format() {
    let up = MockProvider::openai().start().await;
    let gw = gateway_with_route(&up, 1).await;
    gw.tenant("acme").await;
    let key = gw.key("acme", &[]).await;
    gw.module("auth", true).await;
    let base = gw.url();

    // Missing and wrong keys: 401, in OpenAI's shape and Anthropic's.
    let missing = chat_with(&gw, &base, "m", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    assert!(
        missing.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing API key")
    );
    let wrong = bearer("sk-not-a-drover-key");
    let refused = chat_with(&gw, &base, "m", &[("authorization", &wrong)]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"]["message"], "invalid API key");
    let anthropic = gw
        .send_to(
            &base,
            "POST",
            "/v1/messages",
            &[("anthropic-version", "2023-06-01"), ("x-api-key", "nope")],
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(anthropic.status, 401);
    assert_eq!(anthropic.json()["type"], "error");
    assert_eq!(anthropic.json()["error"]["type"], "authentication_error");
    let models = gw.send_to(&base, "GET", "/v1/models", &[], "").await;
    assert_eq!(models.status, 401);
    assert_eq!(up.requests().len(), 0, "nothing refused reached the provider");

    // The key works in each header the SDKs use, and never goes upstream.
    let auth = bearer(&key.secret);
    for header in [
        ("authorization", auth.as_str()),
        ("x-api-key", &key.secret),
        ("api-key", &key.secret),
    ] {
        let reply = chat_with(&gw, &base, "m", &[header]).await;
        assert_eq!(reply.status, 200, "{header:?}: {}", reply.text());
        let seen = up.last_request().unwrap();
        for name in ["authorization", "x-api-key", "api-key"] {
            assert!(
                !seen.header(name).unwrap_or_default().contains(&key.secret),
                "the key reached the provider in {name}"
            );
        }
    }
    assert_eq!(
        gw.send_to(&base, "GET", "/v1/models", &[("authorization", &auth)], "")
            .await
            .status,
        200
    );

    // Suspending the tenant refuses its keys; resuming lets them in again.
    let mut admin = gw.admin.clone();
    gw.wait_all(gw.tenant_state("acme", pb::TenantState::Suspended).await)
        .await;
    let reply = chat_with(&gw, &base, "m", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 401);
    assert!(reply.text().contains("suspended"), "{}", reply.text());
    gw.wait_all(gw.tenant_state("acme", pb::TenantState::Active).await)
        .await;
    assert_eq!(
        chat_with(&gw, &base, "m", &[("authorization", &auth)])
            .await
            .status,
        200
    );

    // Revoked: refused.
    let key_id = key.key.unwrap().id;
    let v = admin
        .revoke_key(pb::RevokeKeyRequest { id: key_id })
        .await
        .unwrap()
        .into_inner()
        .version;
    gw.wait_all(v).await;
    assert_eq!(
        chat_with(&gw, &base, "m", &[("authorization", &auth)])
            .await
            .status,
        401
    );

    // Expired: refused once its time has passed.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let short = admin
        .create_key(pb::CreateKeyRequest {
            tenant: "acme".into(),
            expires_unix_ms: now_ms + 1_500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    gw.wait_all(short.version).await;
    let auth = bearer(&short.secret);
    assert_eq!(
        chat_with(&gw, &base, "m", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let reply = chat_with(&gw, &base, "m", &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["message"], "API key expired");
}

#[tokio::test]
async fn a_key_limited_to_one_alias_gets_403_elsewhere_and_sees_only_its_alias() {
    let up = MockProvider::openai().start().await;
    let gw = gateway_with_route(&up, 1).await;
    gw.tenant("acme").await;
    let key = gw.key("acme", &["m"]).await;
    gw.module("auth", true).await;
    let auth = bearer(&key.secret);
    let base = gw.url();

    assert_eq!(
        chat_with(&gw, &base, "m", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    for model in ["other", "up/one", "no-such-model"] {
        let reply = chat_with(&gw, &base, model, &[("authorization", &auth)]).await;
        assert_eq!(reply.status, 403, "{model}");
        assert_eq!(reply.json()["error"]["code"], "model_not_allowed");
    }
    let anthropic = gw
        .send_to(
            &base,
            "POST",
            "/v1/messages",
            &[("anthropic-version", "2023-06-01"), ("x-api-key", &key.secret)],
            r#"{"model":"other","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(anthropic.status, 403);
    assert_eq!(anthropic.json()["error"]["type"], "permission_error");

    let listed = gw
        .send_to(&base, "GET", "/v1/models", &[("authorization", &auth)], "")
        .await;
    let ids: Vec<_> = listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["m"]);
    let anthropic_list = gw
        .send_to(
            &base,
            "GET",
            "/v1/models",
            &[("anthropic-version", "2023-06-01"), ("x-api-key", &key.secret)],
            "",
        )
        .await;
    assert_eq!(anthropic_list.json()["data"][0]["id"], "m");
    assert_eq!(anthropic_list.json()["data"].as_array().unwrap().len(), 1);
    // A key without a list sees everything.
    let any = gw.key("acme", &[]).await;
    let all = gw
        .send_to(
            &base,
            "GET",
            "/v1/models",
            &[("authorization", &bearer(&any.secret))],
            "",
        )
        .await;
    assert!(all.json()["data"].as_array().unwrap().len() > 2);
}

#[tokio::test]
async fn the_official_openai_client_raises_its_authentication_error_for_a_bad_key() {
    use async_openai::config::OpenAIConfig;
    use async_openai::error::OpenAIError;
    use async_openai::types::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};

    let up = MockProvider::openai().start().await;
    let gw = gateway_with_route(&up, 1).await;
    gw.tenant("acme").await;
    let key = gw.key("acme", &["m"]).await;
    gw.module("auth", true).await;
    let client = |secret: &str| {
        async_openai::Client::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", gw.url()))
                .with_api_key(secret),
        )
    };
    let request = |model: &str| {
        CreateChatCompletionRequestArgs::default()
            .model(model)
            .messages([ChatCompletionRequestUserMessageArgs::default()
                .content("hi")
                .build()
                .unwrap()
                .into()])
            .build()
            .unwrap()
    };
    let err = client("drv_wrong").chat().create(request("m")).await.unwrap_err();
    match err {
        OpenAIError::ApiError(e) => {
            assert_eq!(e.code.as_deref(), Some("invalid_api_key"), "{e:?}");
            assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
        }
        other => panic!("expected the API's authentication error, got {other:?}"),
    }
    let err = client(&key.secret)
        .chat()
        .create(request("other"))
        .await
        .unwrap_err();
    match err {
        OpenAIError::ApiError(e) => assert_eq!(e.code.as_deref(), Some("model_not_allowed"), "{e:?}"),
        other => panic!("expected a permission error, got {other:?}"),
    }
    let ok = client(&key.secret).chat().create(request("m")).await.unwrap();
    assert!(!ok.choices.is_empty());
}

#[tokio::test]
async fn tenants_are_isolated_in_cache_usage_and_model_lists() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route_cached("shared", &["up/one"], 300).await;
    gw.route("a-only", &["up/two"]).await;
    gw.tenant("alpha").await;
    gw.tenant("beta").await;
    let a = gw.key("alpha", &["shared", "a-only"]).await;
    let b = gw.key("beta", &["shared"]).await;
    gw.module("auth", true).await;
    let base = gw.url();
    let send = |secret: String| {
        let gw = &gw;
        let base = base.clone();
        async move { chat_with(gw, &base, "shared", &[("authorization", &bearer(&secret))]).await }
    };

    let first_a = send(a.secret.clone()).await;
    assert_eq!(first_a.header("x-drover-cache"), Some("miss"));
    assert_eq!(send(a.secret.clone()).await.header("x-drover-cache"), Some("hit"));
    // The same request from another tenant is not served from alpha's entry.
    assert_eq!(
        send(b.secret.clone()).await.header("x-drover-cache"),
        Some("miss")
    );
    assert_eq!(send(b.secret.clone()).await.header("x-drover-cache"), Some("hit"));
    assert_eq!(up.requests().len(), 2, "one provider call per tenant");

    gw.wait_for_usage(4).await;
    let by_tenant = gw
        .admin
        .clone()
        .query_usage(pb::UsageQuery {
            group_by: pb::UsageGroupBy::Tenant as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let row = |t: &str| {
        by_tenant
            .rows
            .iter()
            .find(|r| r.group == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!((row("alpha").requests, row("alpha").cache_hits), (2, 1));
    assert_eq!((row("beta").requests, row("beta").cache_hits), (2, 1));

    let list = |secret: &str| {
        let gw = &gw;
        let base = base.clone();
        let auth = bearer(secret);
        async move {
            let reply = gw
                .send_to(&base, "GET", "/v1/models", &[("authorization", &auth)], "")
                .await;
            let mut ids: Vec<String> = reply.json()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(list(&a.secret).await, ["a-only", "shared"]);
    assert_eq!(list(&b.secret).await, ["shared"]);
}

#[tokio::test]
async fn three_data_planes_follow_key_and_tenant_changes_within_a_second() {
    let up = MockProvider::openai().start().await;
    let gw = gateway_with_route(&up, 3).await;
    gw.tenant("acme").await;
    gw.module("auth", true).await;
    let mut admin = gw.admin.clone();
    let bases: Vec<String> = gw.dps.iter().map(|d| d.url()).collect();

    // Polls every data plane until each answers `want`, and returns how long that took.
    let until_all = |auth: String, want: u16| {
        let gw = &gw;
        let bases = bases.clone();
        async move {
            let started = tokio::time::Instant::now();
            for base in &bases {
                loop {
                    let status = chat_with(gw, base, "m", &[("authorization", &auth)]).await.status;
                    if status == want {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "{base} still answers {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            started.elapsed()
        }
    };

    let key = admin
        .create_key(pb::CreateKeyRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let auth = bearer(&key.secret);
    assert!(
        until_all(auth.clone(), 200).await < Duration::from_secs(1),
        "created"
    );

    gw.tenant_state("acme", pb::TenantState::Suspended).await;
    assert!(
        until_all(auth.clone(), 401).await < Duration::from_secs(1),
        "suspended"
    );
    gw.tenant_state("acme", pb::TenantState::Active).await;
    assert!(
        until_all(auth.clone(), 200).await < Duration::from_secs(1),
        "resumed"
    );

    admin
        .revoke_key(pb::RevokeKeyRequest {
            id: key.key.unwrap().id,
        })
        .await
        .unwrap();
    assert!(until_all(auth, 401).await < Duration::from_secs(1), "revoked");
}

#[tokio::test]
async fn switching_auth_under_load_fails_nothing_but_the_expected_401s() {
    let up = MockProvider::openai().start().await;
    let gw = Arc::new(gateway_with_route(&up, 1).await);
    gw.tenant("acme").await;
    let key = gw.key("acme", &[]).await;
    let stop = Arc::new(AtomicBool::new(false));

    // Two loops: one with a valid key (always 200), one without (200 while off, 401 while on).
    let run = |auth: Option<String>| {
        let gw = gw.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<u16, u32>::new();
            let base = gw.url();
            while !stop.load(Ordering::Relaxed) {
                let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
                let status = chat_with(&gw, &base, "m", &headers).await.status.as_u16();
                *seen.entry(status).or_default() += 1;
            }
            seen
        })
    };
    let keyed = run(Some(bearer(&key.secret)));
    let anonymous = run(None);
    for _ in 0..5 {
        gw.module("auth", true).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        gw.module("auth", false).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let keyed = keyed.await.unwrap();
    let anonymous = anonymous.await.unwrap();
    assert_eq!(keyed.keys().copied().collect::<Vec<_>>(), [200], "{keyed:?}");
    assert!(keyed[&200] > 20, "{keyed:?}");
    assert!(
        anonymous.keys().all(|s| *s == 200 || *s == 401),
        "only the expected refusals: {anonymous:?}"
    );
    assert!(
        anonymous.contains_key(&401) && anonymous.contains_key(&200),
        "{anonymous:?}"
    );
}
