//! The official OpenAI and Anthropic Python SDKs against a gateway with the `auth` module on:
//! runs `tests/python/sdk_auth.py`, which checks that each raises its own authentication error
//! for a bad key and its permission error for a model the key may not use, and gets an answer
//! with the key for its model.
//!
//! The `openai` and `anthropic` packages are installed with pip into
//! `$CARGO_TARGET_TMPDIR/python-deps` on the first run and reused afterwards (see `python/mod.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod python;

use drover_tests::{Gateway, MockProvider};
use python::{PYTHON_TIMEOUT, python, python_deps, repo_root, run};

#[tokio::test]
async fn the_python_sdks_raise_their_authentication_and_permission_errors() {
    let deps = python_deps().await;

    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/one"]).await;
    gw.route("other", &["up/two"]).await;
    gw.tenant("acme").await;
    let key = gw.key("acme", &["m"]).await;
    gw.module("auth", true).await;

    let script = repo_root().join("tests/python/sdk_auth.py");
    let mut cmd = python();
    let checks = run(
        cmd.arg(&script)
            .env("PYTHONPATH", &deps)
            .env("DROVER_DATAPLANE", gw.url())
            .env("DROVER_KEY", &key.secret),
        PYTHON_TIMEOUT,
    )
    .await;
    let report = checks.describe();
    assert!(checks.status.success(), "sdk_auth.py failed: {report}");
    for line in [
        "openai, bad key: openai.AuthenticationError (HTTP 401, invalid_api_key)",
        "anthropic, bad key: anthropic.AuthenticationError (HTTP 401, authentication_error)",
        "openai, key for m, model other: openai.PermissionDeniedError (HTTP 403, model_not_allowed)",
        "anthropic, key for m, model other: anthropic.PermissionDeniedError (HTTP 403, permission_error)",
        "openai, key for m, model m: answer 'mock reply to: hi'",
        "anthropic, key for m, model m: answer 'mock reply to: hi'",
        "all checks passed",
    ] {
        assert!(
            checks.stdout.lines().any(|l| l == line),
            "no line {line:?}: {report}"
        );
    }

    // Only the two allowed calls reached the provider, and without the Drover key.
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{report}");
    for request in &seen {
        for name in ["authorization", "x-api-key"] {
            assert!(
                !request.header(name).unwrap_or_default().contains(&key.secret),
                "the key reached the provider in {name}"
            );
        }
    }
}
