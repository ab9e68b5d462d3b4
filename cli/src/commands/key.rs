//! `drover key`: virtual keys. Create (the secret is printed this once), list, revoke, rotate.

use clap::Subcommand;
use drover_proto::model::now_unix_ms;
use drover_proto::model::{
    MAX_GRACE_SECS, validate_key_id, validate_key_models, validate_key_name, validate_tenant_name,
};
use drover_proto::pb;
use serde::Serialize;

use super::usage::parse_time;
use crate::client::{self, Client, GlobalArgs};
use crate::output::{self, Table};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key for a tenant and print its secret, the only time it is shown.
    Create {
        /// The tenant's name.
        #[arg(long, value_parser = parse_tenant)]
        tenant: String,
        /// A name for people (at most 128 bytes).
        #[arg(long, default_value = "", value_parser = parse_key_name)]
        name: String,
        /// Route aliases or provider/model targets the key may use, comma-separated; default: any.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// When the key stops working: RFC 3339 (or YYYY-MM-DD, midnight UTC), or a duration
        /// from now such as 90d, 12h, 30m, 2w.
        #[arg(long, value_parser = parse_expiry)]
        expires: Option<Expiry>,
        /// Print an object with id, key, tenant, name, models, expires_at instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets): id, prefix, name, tenant, models, created, expires,
    /// last used, state.
    List {
        /// Only the keys of this tenant.
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every data plane refuses it within a second.
    Revoke {
        #[arg(value_parser = parse_id)]
        id: String,
    },
    /// Give a key a new secret (printed once); the old one keeps working for --grace.
    Rotate {
        #[arg(value_parser = parse_id)]
        id: String,
        /// How long the old secret keeps working, e.g. 1h, 7d (at most 30d); default: not at all.
        #[arg(long, value_parser = parse_grace)]
        grace: Option<u32>,
        /// Print an object with id and key instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `--expires`: a time, or a duration from when the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    At(i64),
    In(i64),
}

impl Expiry {
    fn unix_ms(self, now_ms: i64) -> i64 {
        match self {
            Expiry::At(ms) => ms,
            Expiry::In(ms) => now_ms.saturating_add(ms),
        }
    }
}

fn parse_tenant(raw: &str) -> Result<String, String> {
    validate_tenant_name("tenant", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

fn parse_key_name(raw: &str) -> Result<String, String> {
    validate_key_name("name", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

fn parse_id(raw: &str) -> Result<String, String> {
    validate_key_id("id", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

/// `90d`, `12h`, `30m`, `45s`, `2w` → milliseconds.
fn parse_duration_ms(raw: &str) -> Option<i64> {
    let unit_at = raw.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = raw.split_at(unit_at);
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000).filter(|ms| *ms > 0)
}

fn parse_expiry(raw: &str) -> Result<Expiry, String> {
    if let Some(ms) = parse_duration_ms(raw) {
        return Ok(Expiry::In(ms));
    }
    parse_time(raw).map(Expiry::At).map_err(|_| {
        format!("{raw:?} is neither a time (RFC 3339 or YYYY-MM-DD) nor a duration such as 90d, 12h, 30m")
    })
}

fn parse_grace(raw: &str) -> Result<u32, String> {
    let ms = parse_duration_ms(raw).ok_or_else(|| format!("{raw:?} is not a duration such as 1h or 7d"))?;
    u32::try_from(ms / 1000)
        .ok()
        .filter(|s| *s <= MAX_GRACE_SECS)
        .ok_or_else(|| format!("{raw:?} is longer than 30 days"))
}

/// A key in `key list --json` (and `key create --json`, with its secret as `key`).
#[derive(Debug, Serialize)]
pub struct KeyRow {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub prefix: String,
    pub name: String,
    pub tenant: String,
    pub models: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub state: &'static str,
}

impl KeyRow {
    fn new(k: pb::KeyInfo, secret: Option<String>) -> Self {
        KeyRow {
            state: match k.state() {
                pb::KeyState::Revoked => "revoked",
                pb::KeyState::Expired => "expired",
                _ => "active",
            },
            key: secret,
            id: k.id,
            prefix: k.prefix,
            name: k.name,
            tenant: k.tenant,
            models: k.models,
            created_at: output::utc_time(k.created_unix_ms),
            expires_at: output::utc_time_opt(k.expires_unix_ms),
            last_used_at: output::utc_time_opt(k.last_used_unix_ms),
        }
    }
}

fn table(rows: &[KeyRow]) -> Table {
    let mut t = Table::new([
        "ID",
        "PREFIX",
        "NAME",
        "TENANT",
        "MODELS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "STATE",
    ]);
    for r in rows {
        t.row([
            r.id.clone(),
            format!("{}…", r.prefix),
            r.name.clone(),
            r.tenant.clone(),
            if r.models.is_empty() {
                "any".to_owned()
            } else {
                r.models.join(",")
            },
            r.created_at.clone(),
            r.expires_at.clone().unwrap_or_else(|| "never".into()),
            r.last_used_at.clone().unwrap_or_else(|| "never".into()),
            r.state.to_owned(),
        ]);
    }
    t
}

/// The lines `key create` and `key rotate` print for people: the secret, and that it is shown once.
fn secret_text(what: &str, row: &KeyRow, version: u64) -> String {
    format!(
        "{what} {} for tenant {} (policy version {version})\n{}\nThis is the only time the secret is shown; store it now.\n",
        row.id,
        row.tenant,
        row.key.as_deref().unwrap_or_default()
    )
}

pub async fn run(command: KeyCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    if let KeyCommand::Create { models, .. } = &command {
        validate_key_models("models", models).map_err(|e| anyhow::anyhow!("--models: {}", e.reason))?;
    }
    let mut client = Client::connect(global).await?;
    match command {
        KeyCommand::Create {
            tenant,
            name,
            models,
            expires,
            json,
        } => {
            let response = client
                .admin
                .create_key(pb::CreateKeyRequest {
                    tenant,
                    name,
                    models,
                    expires_unix_ms: expires.map_or(0, |e| e.unix_ms(now_unix_ms())),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let row = KeyRow::new(response.key.unwrap_or_default(), Some(response.secret));
            if json {
                output::print(&output::json(&row)?)
            } else {
                output::print(&output::printable_lines(&secret_text(
                    "key",
                    &row,
                    response.version,
                )))
            }
        }
        KeyCommand::List { tenant, json } => {
            let admin = client.admin.clone();
            let rows = client::all_pages(|page_token| {
                let mut admin = admin.clone();
                let tenant = tenant.clone().unwrap_or_default();
                async move {
                    let page = admin
                        .list_keys(pb::ListKeysRequest {
                            tenant,
                            state: 0,
                            page_size: client::PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.keys, page.next_page_token))
                }
            })
            .await
            .map_err(|s| client.error(s))?;
            let rows: Vec<_> = rows.into_iter().map(|k| KeyRow::new(k, None)).collect();
            if json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no keys")
            }
        }
        KeyCommand::Revoke { id } => {
            let response = client
                .admin
                .revoke_key(pb::RevokeKeyRequest { id: id.clone() })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            output::print_change(&format!("key {id} revoked"), response.version)
        }
        KeyCommand::Rotate { id, grace, json } => {
            let response = client
                .admin
                .rotate_key(pb::RotateKeyRequest {
                    id,
                    grace_secs: grace.unwrap_or(0),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let row = KeyRow::new(response.key.unwrap_or_default(), Some(response.secret));
            if json {
                output::print(&output::json(&row)?)
            } else {
                output::print(&output::printable_lines(&secret_text(
                    "new secret of key",
                    &row,
                    response.version,
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    #[test]
    fn parses_create_with_models_and_expiry() {
        match parse(&[
            "drover",
            "key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "ci",
            "--models",
            "gpt,openai/gpt-4o",
            "--expires",
            "90d",
            "--json",
        ])
        .command
        {
            Command::Key(KeyCommand::Create {
                tenant,
                name,
                models,
                expires,
                json,
            }) => {
                assert_eq!((tenant.as_str(), name.as_str()), ("acme", "ci"));
                assert_eq!(models, ["gpt", "openai/gpt-4o"]);
                assert_eq!(expires, Some(Expiry::In(90 * 86_400_000)));
                assert!(json);
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse(&[
            "drover",
            "key",
            "create",
            "--tenant",
            "acme",
            "--expires",
            "2027-01-01T00:00:00Z",
        ])
        .command
        {
            Command::Key(KeyCommand::Create { expires, .. }) => {
                assert_eq!(expires, Some(Expiry::At(1_798_761_600_000)));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            parse_err(&["drover", "key", "create", "--tenant", "acme", "--expires", "soon"])
                .contains("duration")
        );
        assert!(parse_err(&["drover", "key", "revoke", "sk-123"]).contains("not a key id"));
        assert!(
            parse_err(&[
                "drover",
                "key",
                "rotate",
                "key_0123456789abcdEF",
                "--grace",
                "31d"
            ])
            .contains("30 days")
        );
        match parse(&["drover", "key", "rotate", "key_0123456789abcdEF", "--grace", "1h"]).command {
            Command::Key(KeyCommand::Rotate { grace, .. }) => assert_eq!(grace, Some(3600)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_and_create_output() {
        let info = pb::KeyInfo {
            id: "key_0123456789abcdEF".into(),
            prefix: "drv_AbCdEf".into(),
            name: "ci".into(),
            tenant: "acme".into(),
            models: vec!["gpt".into()],
            created_unix_ms: 1_764_979_200_000,
            expires_unix_ms: 0,
            last_used_unix_ms: 1_764_979_260_000,
            state: pb::KeyState::Active.into(),
            revoked_unix_ms: 0,
            previous_expires_unix_ms: 0,
        };
        let rows = vec![KeyRow::new(info.clone(), None)];
        assert_eq!(
            table(&rows).render(),
            "ID                    PREFIX       NAME  TENANT  MODELS  CREATED               EXPIRES  LAST USED             STATE\n\
             key_0123456789abcdEF  drv_AbCdEf…  ci    acme    gpt     2025-12-06T00:00:00Z  never    2025-12-06T00:01:00Z  active\n"
        );
        let list: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert!(list[0].get("key").is_none(), "a listing never has a secret");
        let created = KeyRow::new(info, Some("drv_secret".into()));
        let json: serde_json::Value = serde_json::from_str(&output::json(&created).unwrap()).unwrap();
        for field in ["id", "key", "tenant", "name", "models", "expires_at"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        assert_eq!(json["key"], "drv_secret");
        assert_eq!(json["expires_at"], serde_json::Value::Null);
    }
}
