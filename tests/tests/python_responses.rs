//! The official OpenAI Python SDK's Responses API and structured output through routes to
//! Anthropic (native structured output, and a forced tool for an older Claude), Gemini and an
//! OpenAI-compatible provider (Responses translated to chat completions): runs
//! `tests/python/sdk_responses.py`, which checks `responses.create`, the `responses.stream`
//! helper, `responses.parse`, `chat.completions.parse` and a function-tool round trip per route.
//!
//! The OpenAI mock does not do structured output itself, so that route's parse checks go to a
//! second route whose mock answers the JSON the others would; the test checks that the schema
//! reached it. The `openai` package is installed with pip into `$CARGO_TARGET_TMPDIR/python-deps`
//! on the first run and reused afterwards (see `python/mod.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod python;

use drover_proto::pb::ProviderKind;
use drover_tests::{Gateway, MockProvider};
use python::{PYTHON_TIMEOUT, python, python_deps, repo_root, run};
use serde_json::{Value, json};

/// The prompt of the script's structured-output checks (`PARSE_PROMPT` there).
const PARSE_PROMPT: &str = "Name three colours";

/// The model aliases the script uses (`ROUTES` and `STRUCTURED` there), as `(alias, provider, model)`.
const ROUTES: &[(&str, &str, &str)] = &[
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
    ("claude-3-7-sonnet", "anthropic", "claude-3-7-sonnet-20250219"),
    ("gemini-2.5-flash", "gemini", "gemini-2.5-flash"),
    ("openai-compatible", "compatible", "gpt-4o-mini"),
    ("openai-compatible-json", "compatible-json", "gpt-4o-mini"),
];

#[tokio::test]
async fn the_openai_sdk_uses_responses_and_structured_output_through_every_provider_kind() {
    let deps = python_deps().await;

    let anthropic = MockProvider::anthropic().start().await;
    let gemini = MockProvider::gemini().start().await;
    let compatible = MockProvider::openai().start().await;
    let echo = json!({ "input": PARSE_PROMPT }).to_string();
    let compatible_json = MockProvider::openai().reply(echo).start().await;
    let gw = Gateway::builder().start().await;
    gw.provider_kind("anthropic", ProviderKind::Anthropic, &anthropic.base_url())
        .await;
    gw.provider_kind("gemini", ProviderKind::Gemini, &gemini.base_url())
        .await;
    gw.provider("compatible", &compatible.base_url()).await;
    gw.provider("compatible-json", &compatible_json.base_url()).await;
    for (alias, provider, model) in ROUTES {
        gw.route(alias, &[&format!("{provider}/{model}")]).await;
    }

    let script = repo_root().join("tests/python/sdk_responses.py");
    let mut cmd = python();
    let checks = run(
        cmd.arg(&script)
            .env("PYTHONPATH", &deps)
            .env("DROVER_DATAPLANE", gw.url())
            .env("DROVER_KEY", "sk-drover-test"),
        PYTHON_TIMEOUT,
    )
    .await;
    let report = checks.describe();
    let answer = "'mock reply to: Say hello to the tests'";
    let parsed = format!("{PARSE_PROMPT:?}").replace('"', "'");
    let mut expected = Vec::new();
    for (route, _, _) in &ROUTES[..4] {
        expected.extend([
            format!("{route}, responses.create: answer {answer} (completed, with usage)"),
            format!("{route}, responses.parse: output_parsed.input {parsed}"),
            format!("{route}, chat.completions.parse: message.parsed.input {parsed}, finish_reason 'stop'"),
            format!(
                "{route}, responses tool round trip: get_weather called, then answer \
                 'mock reply to: sunny and 21 degrees'"
            ),
        ]);
    }
    expected.push("all checks passed".to_owned());
    assert!(checks.status.success(), "sdk_responses.py failed: {report}");
    for line in &expected {
        assert!(
            checks.stdout.lines().any(|l| l == line),
            "no line {line:?}: {report}"
        );
    }
    for (route, _, _) in &ROUTES[..4] {
        let prefix = format!("{route}, responses.stream: streamed {answer} in ");
        assert!(
            checks
                .stdout
                .lines()
                .any(|l| l.starts_with(&prefix) && l.ends_with("deltas, final response the same")),
            "no line {prefix:?}…: {report}"
        );
    }

    // Each provider was asked for the schema its own way: Claude 4.5 natively, the older Claude
    // through a forced tool, Gemini in JSON mode.
    let to_anthropic = bodies(&anthropic);
    for (model, way, other) in [
        (
            "claude-sonnet-4-5",
            native as fn(&Value) -> bool,
            forced as fn(&Value) -> bool,
        ),
        ("claude-3-7-sonnet-20250219", forced, native),
    ] {
        let to_model: Vec<&Value> = to_anthropic.iter().filter(|b| b["model"] == model).collect();
        let ways = to_model.iter().filter(|b| way(b)).count();
        assert_eq!(ways, 2, "{model}: {to_model:#?}");
        assert!(!to_model.iter().any(|b| other(b)), "{model}: {to_model:#?}");
    }
    let json_mode = bodies(&gemini)
        .into_iter()
        .filter(|b| {
            let config = &b["generationConfig"];
            config["responseMimeType"] == "application/json"
                && config["responseJsonSchema"]["properties"]["input"]["type"] == "string"
        })
        .count();
    assert_eq!(json_mode, 2, "{:#?}", bodies(&gemini));

    // The OpenAI-compatible provider was asked for the schema; it answered the JSON.
    let structured = compatible_json.requests();
    assert_eq!(structured.len(), 2, "{report}");
    for request in &structured {
        assert_eq!(request.path, "/v1/chat/completions", "{report}");
        let body = request.json().unwrap();
        let format = &body["response_format"];
        assert_eq!(format["type"], "json_schema", "{body}");
        assert_eq!(
            format["json_schema"]["schema"]["properties"]["input"]["type"], "string",
            "{body}"
        );
    }
}

/// The JSON bodies of the requests `up` received.
fn bodies(up: &MockProvider) -> Vec<Value> {
    up.requests().iter().filter_map(|r| r.json()).collect()
}

/// An Anthropic request with native structured output (`output_config.format`) for the script's model.
fn native(body: &Value) -> bool {
    body["output_config"]["format"]["schema"]["properties"]["input"]["type"] == "string"
}

/// An Anthropic request made to answer through the forced `json_output` tool.
fn forced(body: &Value) -> bool {
    body["tool_choice"] == json!({ "type": "tool", "name": "json_output" })
        && body["tools"][0]["input_schema"]["properties"]["input"]["type"] == "string"
}
