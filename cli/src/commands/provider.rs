//! `drover provider`: the upstream APIs requests go to, and where their API keys come from.
//! A credential is sent once, on `add`, and never printed or read back.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use drover_proto::model::{self, ProviderKind, ResponsesApi, Secret};
use drover_proto::pb;
use drover_proto::pb::add_provider_request::Credential;
use serde::Serialize;

use super::ListArgs;
use crate::client::{Client, GlobalArgs, parse_secret};
use crate::output::{self, Table};

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Add a provider (an upstream API), or replace one with --replace.
    Add(AddArgs),
    /// List providers. Credentials are never shown, only where they come from.
    List(ListArgs),
    /// Remove a provider. Fails while a route targets it.
    Remove {
        /// Provider name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Provider name, used in route targets (NAME/MODEL): a-z, 0-9, '-' and '_', starting with a letter.
    #[arg(value_parser = parse_name)]
    name: String,

    /// Wire protocol: openai, anthropic, azure, gemini or openai-compatible.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    kind: ProviderKind,

    /// Base URL of the API, e.g. https://api.openai.com/v1 (request paths are appended to it).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    base_url: String,

    #[command(flatten)]
    credential: CredentialArgs,

    /// Azure OpenAI api-version query parameter, e.g. 2024-10-21 (kind azure only; default: the
    /// data plane's).
    #[arg(long, value_name = "VERSION", value_parser = parse_api_version)]
    api_version: Option<String>,

    /// How OpenAI Responses API calls (POST /v1/responses) reach it: `relay` to its own
    /// Responses endpoint, or `translate` to chat completions (kinds openai, azure and
    /// openai-compatible only; default: relay for openai and azure, translate for
    /// openai-compatible).
    #[arg(long, value_name = "MODE", value_parser = parse_responses_api)]
    responses_api: Option<ResponsesApi>,

    /// Replace the provider of the same name instead of failing.
    #[arg(long)]
    replace: bool,
}

/// At most one way to give the API key; none means requests go upstream without one.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct CredentialArgs {
    /// Environment variable of the data planes that holds the API key (the key never leaves them).
    /// Data planes read only variables their --credential-env-allow matches (default *_API_KEY),
    /// and never DROVER_* (refused here too).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,

    /// The API key itself, stored encrypted by the control plane. `-` reads it from stdin;
    /// prefer that or --api-key-stdin, as other users can see command lines in `ps`.
    #[arg(long, value_name = "KEY", value_parser = parse_secret)]
    api_key: Option<Secret>,

    /// Read the API key from the first line of stdin.
    #[arg(long)]
    api_key_stdin: bool,
}

fn parse_name(raw: &str) -> Result<String, String> {
    model::validate_provider_name(raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

fn parse_kind(raw: &str) -> Result<ProviderKind, String> {
    ProviderKind::parse(raw).map_err(|e| e.reason)
}

fn parse_api_version(raw: &str) -> Result<String, String> {
    model::validate_api_version(raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

fn parse_responses_api(raw: &str) -> Result<ResponsesApi, String> {
    ResponsesApi::parse(raw).map_err(|e| e.reason)
}

fn parse_url(raw: &str) -> Result<String, String> {
    model::parse_base_url(raw)
        .map(|u| u.to_string())
        .map_err(|e| e.reason)
}

impl CredentialArgs {
    /// The credential to send, reading stdin only when asked to.
    fn resolve(&self, stdin: impl FnOnce() -> anyhow::Result<Secret>) -> anyhow::Result<Option<Credential>> {
        if let Some(var) = &self.api_key_env {
            return Ok(Some(Credential::ApiKeyEnv(var.clone())));
        }
        let key = match &self.api_key {
            Some(key) if key.expose() == "-" => stdin()?,
            Some(key) => key.clone(),
            None if self.api_key_stdin => stdin()?,
            None => return Ok(None),
        };
        Ok(Some(Credential::ApiKey(key.expose().to_owned())))
    }
}

/// Reads one line from stdin, prompting (on stderr) when stdin is a terminal.
fn read_key_from_stdin() -> anyhow::Result<Secret> {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        let mut err = io::stderr();
        let _ = write!(err, "API key: ");
        let _ = err.flush();
    }
    read_key(stdin.lock())
}

fn read_key(mut input: impl BufRead) -> anyhow::Result<Secret> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| anyhow!("cannot read the API key from stdin: {e}"))?;
    let key = line.trim();
    if key.is_empty() {
        bail!("no API key on stdin");
    }
    Ok(Secret::new(key))
}

impl AddArgs {
    /// The request, checked with the control plane's own rules.
    fn to_request(
        &self,
        stdin: impl FnOnce() -> anyhow::Result<Secret>,
    ) -> anyhow::Result<pb::AddProviderRequest> {
        let request = pb::AddProviderRequest {
            name: self.name.clone(),
            kind: self.kind.to_wire() as i32,
            base_url: self.base_url.clone(),
            credential: self.credential.resolve(stdin)?,
            replace: self.replace,
            api_version: self.api_version.clone().unwrap_or_default(),
            responses_api: ResponsesApi::to_wire(self.responses_api) as i32,
        };
        model::Provider::try_from(&request)?;
        Ok(request)
    }
}

/// A provider in `provider list --json`.
#[derive(Debug, Serialize)]
pub struct ProviderRow {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    /// `env:VAR`, `stored` or `none`.
    pub credential: String,
    /// Azure OpenAI `api-version`; `null`: the data plane's default.
    pub api_version: Option<String>,
    /// How Responses API calls reach it (`relay` or `translate`, the kind's default when not
    /// set); `null` for kinds that are always translated to.
    pub responses_api: Option<String>,
}

impl From<pb::ProviderInfo> for ProviderRow {
    fn from(p: pb::ProviderInfo) -> Self {
        let kind = ProviderKind::ALL
            .into_iter()
            .find(|k| k.to_wire() as i32 == p.kind);
        let set = ResponsesApi::from_wire_value(p.responses_api).ok().flatten();
        let responses_api = set
            .or_else(|| kind.and_then(ResponsesApi::default_for))
            .map(|m| m.as_str().to_owned());
        ProviderRow {
            name: p.name,
            kind: kind.map_or_else(|| format!("unknown ({})", p.kind), |k| k.as_str().to_owned()),
            base_url: p.base_url,
            credential: p.credential,
            api_version: Some(p.api_version).filter(|v| !v.is_empty()),
            responses_api,
        }
    }
}

fn table(rows: &[ProviderRow]) -> Table {
    let mut t = Table::new([
        "NAME",
        "KIND",
        "BASE URL",
        "CREDENTIAL",
        "API VERSION",
        "RESPONSES",
    ]);
    for r in rows {
        t.row([
            r.name.clone(),
            r.kind.clone(),
            r.base_url.clone(),
            r.credential.clone(),
            r.api_version.clone().unwrap_or_else(|| "-".to_owned()),
            r.responses_api.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    t
}

pub async fn run(command: ProviderCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        ProviderCommand::Add(args) => {
            let request = args.to_request(read_key_from_stdin)?;
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .add_provider(request)
                .await
                .map_err(|s| client.error(s))?;
            let verb = if args.replace { "saved" } else { "added" };
            output::print_change(
                &format!("provider {} {verb}", args.name),
                response.get_ref().version,
            )
        }
        ProviderCommand::List(list) => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .list_providers(pb::ListProvidersRequest {})
                .await
                .map_err(|s| client.error(s))?;
            let rows: Vec<ProviderRow> = response
                .into_inner()
                .providers
                .into_iter()
                .map(Into::into)
                .collect();
            if list.json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no providers")
            }
        }
        ProviderCommand::Remove { name } => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .remove_provider(pb::RemoveProviderRequest { name: name.clone() })
                .await
                .map_err(|s| client.error(s))?;
            output::print_change(&format!("provider {name} removed"), response.get_ref().version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    fn add(args: &[&str]) -> AddArgs {
        let mut argv = vec!["drover", "provider", "add"];
        argv.extend_from_slice(args);
        match parse(&argv).command {
            Command::Provider(ProviderCommand::Add(a)) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn no_stdin() -> anyhow::Result<Secret> {
        panic!("stdin must not be read")
    }

    #[test]
    fn add_with_env_credential() {
        let a = add(&[
            "openai",
            "--kind",
            "openai",
            "--base-url",
            "https://api.openai.com/v1/",
            "--api-key-env",
            "OPENAI_API_KEY",
        ]);
        let req = a.to_request(no_stdin).unwrap();
        assert_eq!(req.name, "openai");
        assert_eq!(req.kind, pb::ProviderKind::Openai as i32);
        assert_eq!(req.base_url, "https://api.openai.com/v1");
        assert_eq!(
            req.credential,
            Some(Credential::ApiKeyEnv("OPENAI_API_KEY".into()))
        );
        assert!(!req.replace);
        assert_eq!(req.api_version, "");
    }

    #[test]
    fn add_azure_with_api_version() {
        let a = add(&[
            "azure",
            "--kind",
            "azure",
            "--base-url",
            "https://res.openai.azure.com",
            "--api-version",
            "2024-10-21",
            "--api-key-env",
            "AZURE_OPENAI_API_KEY",
        ]);
        let req = a.to_request(no_stdin).unwrap();
        assert_eq!(req.kind, pb::ProviderKind::Azure as i32);
        assert_eq!(req.api_version, "2024-10-21");
        assert_eq!(
            req.credential,
            Some(Credential::ApiKeyEnv("AZURE_OPENAI_API_KEY".into()))
        );
        let a = add(&[
            "azure",
            "--kind",
            "azure",
            "--base-url",
            "https://res.openai.azure.com",
            "--api-version",
            "2025-04-01-preview",
        ]);
        assert_eq!(a.to_request(no_stdin).unwrap().api_version, "2025-04-01-preview");
    }

    #[test]
    fn api_version_is_refused_before_sending_unless_azure_and_well_formed() {
        let a = add(&[
            "x",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-version",
            "2024-10-21",
        ]);
        let err = a.to_request(no_stdin).unwrap_err().to_string();
        assert!(err.contains("only azure providers take an api-version"), "{err}");
        let err = parse_err(&[
            "drover",
            "provider",
            "add",
            "x",
            "--kind",
            "azure",
            "--base-url",
            "https://x.example",
            "--api-version",
            "2024-10-21&x=1",
        ]);
        assert!(
            err.contains("--api-version") && err.contains("must be 1-64 of A-Z"),
            "{err}"
        );
    }

    #[test]
    fn responses_api_is_sent_when_given_and_refused_for_kinds_without_the_endpoint() {
        let base = [
            "x",
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://localhost:8000/v1",
        ];
        assert_eq!(add(&base).to_request(no_stdin).unwrap().responses_api, 0);
        let relay = [&base[..], &["--responses-api", "relay"]].concat();
        assert_eq!(
            add(&relay).to_request(no_stdin).unwrap().responses_api,
            pb::ResponsesApi::Relay as i32
        );
        let argv = [
            &["drover", "provider", "add"],
            &base[..],
            &["--responses-api", "native"],
        ]
        .concat();
        let err = <crate::Cli as clap::Parser>::try_parse_from(argv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected relay or translate"), "{err}");
        let a = add(&[
            "claude",
            "--kind",
            "anthropic",
            "--base-url",
            "https://api.anthropic.com/v1",
            "--responses-api",
            "relay",
        ]);
        let err = a.to_request(no_stdin).unwrap_err().to_string();
        assert!(err.contains("only openai, azure and openai-compatible"), "{err}");
    }

    #[test]
    fn add_without_credential_and_with_replace() {
        let a = add(&[
            "ollama",
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://localhost:11434/v1",
            "--replace",
        ]);
        let req = a.to_request(no_stdin).unwrap();
        assert_eq!(req.kind, pb::ProviderKind::OpenaiCompatible as i32);
        assert_eq!(req.credential, None);
        assert!(req.replace);
    }

    #[test]
    fn api_key_from_argv_or_stdin() {
        let a = add(&[
            "anthropic",
            "--kind",
            "anthropic",
            "--base-url",
            "https://api.anthropic.com",
            "--api-key",
            "sk-ant-1",
        ]);
        assert_eq!(
            a.to_request(no_stdin).unwrap().credential,
            Some(Credential::ApiKey("sk-ant-1".into()))
        );

        let from_stdin = || read_key(io::Cursor::new("sk-from-stdin\r\n"));
        let a = add(&[
            "anthropic",
            "--kind",
            "anthropic",
            "--base-url",
            "https://x.example",
            "--api-key",
            "-",
        ]);
        assert_eq!(
            a.to_request(from_stdin).unwrap().credential,
            Some(Credential::ApiKey("sk-from-stdin".into()))
        );
        let a = add(&[
            "anthropic",
            "--kind",
            "anthropic",
            "--base-url",
            "https://x.example",
            "--api-key-stdin",
        ]);
        assert_eq!(
            a.to_request(from_stdin).unwrap().credential,
            Some(Credential::ApiKey("sk-from-stdin".into()))
        );

        let empty = || read_key(io::Cursor::new("\n"));
        let err = a.to_request(empty).unwrap_err().to_string();
        assert_eq!(err, "no API key on stdin");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let a = add(&[
            "a",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-key",
            "sk-very-secret",
        ]);
        assert!(!format!("{a:?}").contains("sk-very-secret"));
    }

    #[test]
    fn bad_values_are_usage_errors_with_the_models_words() {
        let err = parse_err(&[
            "drover",
            "provider",
            "add",
            "x",
            "--kind",
            "bedrock",
            "--base-url",
            "https://x.example",
        ]);
        assert!(
            err.contains("unknown provider kind \"bedrock\"; expected one of openai, anthropic"),
            "{err}"
        );
        let err = parse_err(&[
            "drover",
            "provider",
            "add",
            "x",
            "--kind",
            "openai",
            "--base-url",
            "ftp://x",
        ]);
        assert!(err.contains("scheme must be http or https"), "{err}");
        let err = parse_err(&[
            "drover",
            "provider",
            "add",
            "Bad",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
        ]);
        assert!(err.contains("must be 1-64 of a-z"), "{err}");
        // One credential at most.
        let err = parse_err(&[
            "drover",
            "provider",
            "add",
            "x",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-key-env",
            "K",
            "--api-key",
            "k",
        ]);
        assert!(err.contains("cannot be used with"), "{err}");
        let err = parse_err(&[
            "drover",
            "provider",
            "add",
            "x",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-key",
            "k",
            "--api-key-stdin",
        ]);
        assert!(err.contains("cannot be used with"), "{err}");
        // Required options.
        assert!(parse_err(&["drover", "provider", "add", "x", "--kind", "openai"]).contains("--base-url"));
    }

    #[test]
    fn bad_env_var_is_refused_before_sending() {
        let a = add(&[
            "x",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-key-env",
            "1BAD",
        ]);
        let err = a.to_request(no_stdin).unwrap_err().to_string();
        assert!(err.contains("is not an environment variable name"), "{err}");
    }

    #[test]
    fn list_and_remove_parse() {
        assert!(matches!(
            parse(&["drover", "provider", "list", "--json"]).command,
            Command::Provider(ProviderCommand::List(ListArgs { json: true }))
        ));
        match parse(&["drover", "provider", "remove", "openai"]).command {
            Command::Provider(ProviderCommand::Remove { name }) => assert_eq!(name, "openai"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_output() {
        let rows: Vec<ProviderRow> = vec![
            pb::ProviderInfo {
                name: "openai".into(),
                kind: pb::ProviderKind::Openai as i32,
                base_url: "https://api.openai.com/v1".into(),
                credential: "env:OPENAI_API_KEY".into(),
                api_version: String::new(),
                responses_api: 0,
            }
            .into(),
            pb::ProviderInfo {
                name: "local".into(),
                kind: pb::ProviderKind::OpenaiCompatible as i32,
                base_url: "http://localhost:8000/v1".into(),
                credential: "none".into(),
                api_version: String::new(),
                responses_api: 0,
            }
            .into(),
            pb::ProviderInfo {
                name: "azure".into(),
                kind: pb::ProviderKind::Azure as i32,
                base_url: "https://res.openai.azure.com".into(),
                credential: "env:AZURE_OPENAI_API_KEY".into(),
                api_version: "2024-10-21".into(),
                responses_api: pb::ResponsesApi::Translate as i32,
            }
            .into(),
            pb::ProviderInfo {
                name: "claude".into(),
                kind: pb::ProviderKind::Anthropic as i32,
                base_url: "https://api.anthropic.com/v1".into(),
                credential: "env:ANTHROPIC_API_KEY".into(),
                api_version: String::new(),
                responses_api: 0,
            }
            .into(),
        ];
        assert_eq!(
            table(&rows).render(),
            "NAME    KIND               BASE URL                      CREDENTIAL                API VERSION  RESPONSES\n\
             openai  openai             https://api.openai.com/v1     env:OPENAI_API_KEY        -            relay\n\
             local   openai-compatible  http://localhost:8000/v1      none                      -            translate\n\
             azure   azure              https://res.openai.azure.com  env:AZURE_OPENAI_API_KEY  2024-10-21   translate\n\
             claude  anthropic          https://api.anthropic.com/v1  env:ANTHROPIC_API_KEY     -            -\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({
                "name": "openai",
                "kind": "openai",
                "base_url": "https://api.openai.com/v1",
                "credential": "env:OPENAI_API_KEY",
                "api_version": null,
                "responses_api": "relay",
            })
        );
        assert_eq!(json[1]["responses_api"], "translate");
        assert_eq!(json[3]["responses_api"], serde_json::Value::Null);
        assert_eq!(json[1]["kind"], "openai-compatible");
        assert_eq!(json[2]["api_version"], "2024-10-21");
    }
}
