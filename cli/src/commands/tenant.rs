//! `drover tenant`: who virtual keys belong to. Create, list, update, suspend, resume, delete.

use std::collections::BTreeMap;

use clap::Subcommand;
use drover_proto::model::{OnCpLoss, validate_label, validate_tenant_name};
use drover_proto::pb;
use serde::Serialize;

use super::ListArgs;
use crate::client::{self, Client, GlobalArgs};
use crate::output::{self, Table};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// 1-64 of a-z, 0-9, '-' and '_', starting with a letter.
        #[arg(value_parser = parse_name)]
        name: String,
        /// A label, `key=value`; repeat for more.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// What data planes do with its requests that need a lease (a rate limit or spend cap
        /// applies) while they cannot reach the control plane and hold none: let them through
        /// (open, the default) or refuse them with a 503 (closed).
        #[arg(long, value_name = "open|closed", value_parser = parse_on_cp_loss)]
        on_cp_loss: Option<OnCpLoss>,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tenants with their state, labels, active keys and on-cp-loss mode.
    List(ListArgs),
    /// Change a tenant's on-cp-loss mode.
    Update {
        #[arg(value_parser = parse_name)]
        name: String,
        /// open: requests that need a lease go through while the control plane is away;
        /// closed: they are refused with a 503.
        #[arg(long, value_name = "open|closed", value_parser = parse_on_cp_loss, required = true)]
        on_cp_loss: Option<OnCpLoss>,
        /// Print the tenant as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Suspend a tenant: every data plane refuses its keys until it is resumed.
    Suspend {
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Resume a suspended tenant.
    Resume {
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Delete a tenant (refused while it has active keys, unless --force). Its usage stays.
    Delete {
        #[arg(value_parser = parse_name)]
        name: String,
        /// Revoke the tenant's active keys and delete it.
        #[arg(long)]
        force: bool,
    },
}

fn parse_name(raw: &str) -> Result<String, String> {
    validate_tenant_name("name", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

fn parse_on_cp_loss(raw: &str) -> Result<OnCpLoss, String> {
    OnCpLoss::parse(raw).ok_or_else(|| format!("{raw:?} is neither open nor closed"))
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not key=value"))?;
    validate_label("label", k, v).map_err(|e| e.reason)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// A tenant in `tenant list --json`.
#[derive(Debug, Serialize)]
pub struct TenantRow {
    pub name: String,
    pub state: &'static str,
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub active_keys: u64,
    /// `open` or `closed`.
    pub on_cp_loss: &'static str,
}

impl From<pb::TenantInfo> for TenantRow {
    fn from(t: pb::TenantInfo) -> Self {
        TenantRow {
            state: match t.state() {
                pb::TenantState::Suspended => "suspended",
                _ => "active",
            },
            on_cp_loss: match t.on_cp_loss() {
                pb::OnCpLoss::Closed => OnCpLoss::Closed.as_str(),
                _ => OnCpLoss::Open.as_str(),
            },
            name: t.name,
            labels: t.labels.into_iter().collect(),
            created_at: output::utc_time(t.created_unix_ms),
            active_keys: t.active_keys,
        }
    }
}

fn table(rows: &[TenantRow]) -> Table {
    let mut t = Table::new([
        "TENANT",
        "STATE",
        "ACTIVE KEYS",
        "ON CP LOSS",
        "CREATED",
        "LABELS",
    ]);
    for r in rows {
        t.row([
            r.name.clone(),
            r.state.to_owned(),
            r.active_keys.to_string(),
            r.on_cp_loss.to_owned(),
            r.created_at.clone(),
            r.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    t
}

pub async fn run(command: TenantCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(global).await?;
    match command {
        TenantCommand::Create {
            name,
            labels,
            on_cp_loss,
            json,
        } => {
            let response = client
                .admin
                .create_tenant(pb::CreateTenantRequest {
                    name,
                    labels: labels.into_iter().collect(),
                    request_id: String::new(),
                    on_cp_loss: on_cp_loss.map_or(0, |o| pb::OnCpLoss::from(o).into()),
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let tenant = TenantRow::from(response.tenant.unwrap_or_default());
            if json {
                output::print(&output::json(&tenant)?)
            } else {
                output::print_change(&format!("tenant {} created", tenant.name), response.version)
            }
        }
        TenantCommand::List(list) => {
            let admin = client.admin.clone();
            let rows = client::all_pages(|page_token| {
                let mut admin = admin.clone();
                async move {
                    let page = admin
                        .list_tenants(pb::ListTenantsRequest {
                            page_size: client::PAGE_SIZE,
                            page_token,
                            state: 0,
                        })
                        .await?
                        .into_inner();
                    Ok((page.tenants, page.next_page_token))
                }
            })
            .await
            .map_err(|s| client.error(s))?;
            let rows: Vec<_> = rows.into_iter().map(TenantRow::from).collect();
            if list.json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no tenants")
            }
        }
        TenantCommand::Update {
            name,
            on_cp_loss,
            json,
        } => {
            let response = client
                .admin
                .update_tenant(pb::UpdateTenantRequest {
                    name,
                    on_cp_loss: on_cp_loss.map_or(0, |o| pb::OnCpLoss::from(o).into()),
                    ..Default::default()
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let tenant = TenantRow::from(response.tenant.unwrap_or_default());
            if json {
                output::print(&output::json(&tenant)?)
            } else {
                output::print_change(
                    &format!("tenant {} updated: on-cp-loss {}", tenant.name, tenant.on_cp_loss),
                    response.version,
                )
            }
        }
        TenantCommand::Suspend { name } => set_state(&mut client, name, pb::TenantState::Suspended).await,
        TenantCommand::Resume { name } => set_state(&mut client, name, pb::TenantState::Active).await,
        TenantCommand::Delete { name, force } => {
            let response = client
                .admin
                .delete_tenant(pb::DeleteTenantRequest {
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let revoked = match response.revoked_keys {
                0 => String::new(),
                n => format!(", {n} key(s) revoked"),
            };
            output::print_change(&format!("tenant {name} deleted{revoked}"), response.version)
        }
    }
}

async fn set_state(client: &mut Client, name: String, state: pb::TenantState) -> anyhow::Result<()> {
    let response = client
        .admin
        .update_tenant(pb::UpdateTenantRequest {
            name: name.clone(),
            state: state.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| client.error(s))?
        .into_inner();
    let done = if state == pb::TenantState::Suspended {
        "suspended"
    } else {
        "resumed"
    };
    output::print_change(&format!("tenant {name} {done}"), response.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    #[test]
    fn parses_names_and_labels() {
        match parse(&[
            "drover",
            "tenant",
            "create",
            "acme",
            "--label",
            "team=search",
            "--label",
            "tier=",
        ])
        .command
        {
            Command::Tenant(TenantCommand::Create {
                name,
                labels,
                on_cp_loss,
                json,
            }) => {
                assert_eq!(name, "acme");
                assert_eq!(
                    labels,
                    [("team".into(), "search".into()), ("tier".into(), String::new())]
                );
                assert_eq!(on_cp_loss, None);
                assert!(!json);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_err(&["drover", "tenant", "create", "Acme"]).contains("tenant name"));
        assert!(parse_err(&["drover", "tenant", "create", "acme", "--label", "team"]).contains("key=value"));
        assert!(matches!(
            parse(&["drover", "tenant", "delete", "acme", "--force"]).command,
            Command::Tenant(TenantCommand::Delete { force: true, .. })
        ));
    }

    #[test]
    fn parses_the_on_cp_loss_mode() {
        assert!(matches!(
            parse(&["drover", "tenant", "create", "acme", "--on-cp-loss", "closed"]).command,
            Command::Tenant(TenantCommand::Create {
                on_cp_loss: Some(OnCpLoss::Closed),
                ..
            })
        ));
        assert!(matches!(
            parse(&[
                "drover",
                "tenant",
                "update",
                "acme",
                "--on-cp-loss",
                "open",
                "--json"
            ])
            .command,
            Command::Tenant(TenantCommand::Update {
                on_cp_loss: Some(OnCpLoss::Open),
                json: true,
                ..
            })
        ));
        assert!(
            parse_err(&["drover", "tenant", "create", "acme", "--on-cp-loss", "maybe"])
                .contains("\"maybe\" is neither open nor closed")
        );
        assert!(parse_err(&["drover", "tenant", "update", "acme"]).contains("--on-cp-loss"));
    }

    #[test]
    fn list_output() {
        let rows = vec![TenantRow::from(pb::TenantInfo {
            name: "acme".into(),
            state: pb::TenantState::Suspended.into(),
            labels: [("team".to_owned(), "search".to_owned())].into_iter().collect(),
            created_unix_ms: 1_764_979_200_000,
            active_keys: 2,
            on_cp_loss: pb::OnCpLoss::Closed.into(),
        })];
        assert_eq!(
            table(&rows).render(),
            "TENANT  STATE      ACTIVE KEYS  ON CP LOSS  CREATED               LABELS\n\
             acme    suspended  2            closed      2025-12-06T00:00:00Z  team=search\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(json[0]["labels"]["team"], "search");
        assert_eq!(json[0]["state"], "suspended");
        assert_eq!(json[0]["on_cp_loss"], "closed");
        let unspecified = TenantRow::from(pb::TenantInfo::default());
        assert_eq!(unspecified.on_cp_loss, "open");
    }
}
