//! `drover admin`: admin identities, each with its own token and a role (viewer, operator,
//! admin), optionally scoped to one tenant. Create (the token is printed this once), list, revoke.

use clap::{Subcommand, ValueEnum};
use drover_proto::model::validate_tenant_name;
use drover_proto::pb;
use serde::Serialize;

use super::ListArgs;
use crate::client::{Client, GlobalArgs};
use crate::output::{self, Table};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin identity and print its token, the only time it is shown.
    Create {
        /// 1-64 of a-z, 0-9, '-' and '_', starting with a letter.
        #[arg(value_parser = parse_name)]
        name: String,
        /// What it may do: viewer reads everything but secrets; operator also manages
        /// providers, routes, prices, modules, limits and caps; admin also manages tenants,
        /// keys and admin identities.
        #[arg(long, value_enum)]
        role: Role,
        /// Scope the identity to this tenant (its keys, limits, caps, usage and audit records).
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<String>,
        /// Print an object with name, role, tenant, token, token_prefix, created_at instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List admin identities (never their tokens), `root` first, revoked ones included.
    List(ListArgs),
    /// Revoke an admin identity: its token stops working at once.
    Revoke {
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// `--role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Admin,
    Operator,
    Viewer,
}

impl Role {
    fn to_wire(self) -> pb::AdminRole {
        match self {
            Role::Admin => pb::AdminRole::Admin,
            Role::Operator => pb::AdminRole::Operator,
            Role::Viewer => pb::AdminRole::Viewer,
        }
    }
}

fn role_name(role: pb::AdminRole) -> &'static str {
    match role {
        pb::AdminRole::Admin => "admin",
        pb::AdminRole::Operator => "operator",
        pb::AdminRole::Viewer => "viewer",
        pb::AdminRole::Unspecified => "unknown",
    }
}

fn parse_name(raw: &str) -> Result<String, String> {
    validate_tenant_name("name", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

fn parse_tenant(raw: &str) -> Result<String, String> {
    validate_tenant_name("tenant", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

/// An identity in `admin list --json`.
#[derive(Debug, Serialize)]
pub struct AdminRow {
    pub name: String,
    pub role: &'static str,
    /// The tenant it is scoped to; null: not scoped.
    pub tenant: Option<String>,
    /// Empty for `root`, whose token is not stored.
    pub token_prefix: String,
    /// Null for `root`, which is not stored.
    pub created_at: Option<String>,
    pub created_by: String,
    /// `active` or `revoked`.
    pub state: &'static str,
    pub revoked_at: Option<String>,
}

impl From<pb::AdminInfo> for AdminRow {
    fn from(a: pb::AdminInfo) -> Self {
        AdminRow {
            role: role_name(a.role()),
            state: if a.revoked_unix_ms == 0 {
                "active"
            } else {
                "revoked"
            },
            revoked_at: output::utc_time_opt(a.revoked_unix_ms),
            name: a.name,
            tenant: (!a.tenant.is_empty()).then_some(a.tenant),
            token_prefix: a.token_prefix,
            created_at: output::utc_time_opt(a.created_unix_ms),
            created_by: a.created_by,
        }
    }
}

/// What `admin create --json` prints: the identity and its token, shown this once.
#[derive(Debug, Serialize)]
pub struct CreatedAdmin {
    pub name: String,
    pub role: &'static str,
    pub tenant: Option<String>,
    pub token: String,
    pub token_prefix: String,
    pub created_at: String,
}

fn table(rows: &[AdminRow]) -> Table {
    let mut t = Table::new([
        "NAME",
        "ROLE",
        "TENANT",
        "PREFIX",
        "CREATED",
        "CREATED BY",
        "STATE",
    ]);
    for r in rows {
        t.row([
            r.name.clone(),
            r.role.to_owned(),
            r.tenant.clone().unwrap_or_else(|| "-".into()),
            if r.token_prefix.is_empty() {
                "-".to_owned()
            } else {
                format!("{}…", r.token_prefix)
            },
            r.created_at.clone().unwrap_or_else(|| "-".into()),
            if r.created_by.is_empty() {
                "-".to_owned()
            } else {
                r.created_by.clone()
            },
            r.state.to_owned(),
        ]);
    }
    t
}

/// The lines `admin create` prints for people: the token, and that it is shown once.
fn token_text(admin: &CreatedAdmin, version: u64) -> String {
    let scope = admin
        .tenant
        .as_ref()
        .map(|t| format!(", scoped to tenant {t}"))
        .unwrap_or_default();
    format!(
        "admin {} created with role {}{scope} (policy version {version})\n{}\n\
         This is the only time the token is shown; store it now.\n",
        admin.name, admin.role, admin.token
    )
}

pub async fn run(command: AdminCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(global).await?;
    match command {
        AdminCommand::Create {
            name,
            role,
            tenant,
            json,
        } => {
            let response = client
                .admin
                .create_admin(pb::CreateAdminRequest {
                    name,
                    role: role.to_wire().into(),
                    tenant: tenant.unwrap_or_default(),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let info = AdminRow::from(response.admin.unwrap_or_default());
            let created = CreatedAdmin {
                name: info.name,
                role: info.role,
                tenant: info.tenant,
                token: response.token,
                token_prefix: info.token_prefix,
                created_at: info.created_at.unwrap_or_default(),
            };
            if json {
                output::print(&output::json(&created)?)
            } else {
                output::print(&output::printable_lines(&token_text(&created, response.version)))
            }
        }
        AdminCommand::List(list) => {
            let rows: Vec<AdminRow> = client
                .admin
                .list_admins(pb::ListAdminsRequest {})
                .await
                .map_err(|s| client.error(s))?
                .into_inner()
                .admins
                .into_iter()
                .map(AdminRow::from)
                .collect();
            if list.json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no admin identities")
            }
        }
        AdminCommand::Revoke { name } => {
            let response = client
                .admin
                .revoke_admin(pb::RevokeAdminRequest { name: name.clone() })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            output::print_change(
                &format!("admin {name} revoked: its token no longer works"),
                response.version,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    #[test]
    fn parses_create_with_a_role_and_a_tenant() {
        match parse(&[
            "drover", "admin", "create", "ops-1", "--role", "operator", "--tenant", "acme", "--json",
        ])
        .command
        {
            Command::Admin(AdminCommand::Create {
                name,
                role,
                tenant,
                json,
            }) => {
                assert_eq!(name, "ops-1");
                assert_eq!(role, Role::Operator);
                assert_eq!(tenant.as_deref(), Some("acme"));
                assert!(json);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_err(&["drover", "admin", "create", "x"]).contains("--role"));
        assert!(parse_err(&["drover", "admin", "create", "x", "--role", "owner"]).contains("owner"));
        assert!(parse_err(&["drover", "admin", "create", "Bad", "--role", "viewer"]).contains("name"));
        assert!(parse_err(&["drover", "admin", "revoke", "9lives"]).contains("name"));
        assert!(matches!(
            parse(&["drover", "admin", "list", "--json"]).command,
            Command::Admin(AdminCommand::List(ListArgs { json: true }))
        ));
    }

    #[test]
    fn list_and_create_output() {
        let root = pb::AdminInfo {
            name: "root".into(),
            role: pb::AdminRole::Admin.into(),
            ..Default::default()
        };
        let viewer = pb::AdminInfo {
            name: "auditor".into(),
            role: pb::AdminRole::Viewer.into(),
            tenant: "acme".into(),
            token_prefix: "drv_admin_AbC".into(),
            created_unix_ms: 1_764_979_200_000,
            created_by: "root".into(),
            revoked_unix_ms: 1_764_979_260_000,
        };
        let rows = vec![AdminRow::from(root), AdminRow::from(viewer.clone())];
        assert_eq!(
            table(&rows).render(),
            "NAME     ROLE    TENANT  PREFIX          CREATED               CREATED BY  STATE\n\
             root     admin   -       -               -                     -           active\n\
             auditor  viewer  acme    drv_admin_AbC…  2025-12-06T00:00:00Z  root        revoked\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(json[0]["tenant"], serde_json::Value::Null);
        assert_eq!(json[0]["created_at"], serde_json::Value::Null);
        assert_eq!(json[1]["state"], "revoked");
        assert_eq!(json[1]["revoked_at"], "2025-12-06T00:01:00Z");
        assert!(json[1].get("token").is_none(), "a listing never has a token");

        let info = AdminRow::from(viewer);
        let created = CreatedAdmin {
            name: info.name,
            role: info.role,
            tenant: info.tenant,
            token: "drv_admin_secret".into(),
            token_prefix: info.token_prefix,
            created_at: info.created_at.unwrap_or_default(),
        };
        let json: serde_json::Value = serde_json::from_str(&output::json(&created).unwrap()).unwrap();
        for field in ["name", "role", "tenant", "token", "token_prefix", "created_at"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        let text = token_text(&created, 7);
        assert!(text.starts_with("admin auditor created with role viewer, scoped to tenant acme (policy version 7)\ndrv_admin_secret\n"), "{text}");
        assert!(text.contains("only time"), "{text}");
    }
}
