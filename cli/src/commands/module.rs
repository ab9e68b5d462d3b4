//! `drover module`: the gateway modules (auth, rate_limit, spend_cap, audit, redact), switched
//! on and off at runtime. Only a module this version implements (`available`) can be switched
//! on; the control plane refuses the others, and that refusal is printed as the one error line.

use clap::Subcommand;
use drover_proto::model::Module;
use drover_proto::pb;
use serde::Serialize;

use super::ListArgs;
use crate::client::{Client, GlobalArgs};
use crate::output::{self, Table};

#[derive(Debug, Subcommand)]
pub enum ModuleCommand {
    /// List the gateway modules, whether each is on, and whether this version implements it.
    List(ListArgs),
    /// Switch a module on: auth, rate_limit, spend_cap, audit or redact (only one this version
    /// implements; see `module list`).
    Enable {
        /// Module name.
        #[arg(value_parser = parse_module)]
        name: Module,
    },
    /// Switch a module off.
    Disable {
        /// Module name.
        #[arg(value_parser = parse_module)]
        name: Module,
    },
}

fn parse_module(raw: &str) -> Result<Module, String> {
    Module::parse(raw).map_err(|e| e.reason)
}

/// A module in `module list --json`.
#[derive(Debug, Serialize)]
pub struct ModuleRow {
    pub name: String,
    pub enabled: bool,
    /// Whether this version implements it (only then can it be switched on).
    pub available: bool,
}

impl From<pb::Module> for ModuleRow {
    fn from(m: pb::Module) -> Self {
        ModuleRow {
            name: m.name,
            enabled: m.enabled,
            available: m.available,
        }
    }
}

fn table(rows: &[ModuleRow]) -> Table {
    let mut t = Table::new(["MODULE", "STATE", "AVAILABLE"]);
    for r in rows {
        t.row([
            r.name.clone(),
            if r.enabled { "on" } else { "off" }.to_owned(),
            if r.available {
                "yes".to_owned()
            } else {
                "no (not implemented in this version)".to_owned()
            },
        ]);
    }
    t
}

pub async fn run(command: ModuleCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let (module, enabled) = match command {
        ModuleCommand::List(list) => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .list_modules(pb::ListModulesRequest {})
                .await
                .map_err(|s| client.error(s))?;
            let rows: Vec<ModuleRow> = response
                .into_inner()
                .modules
                .into_iter()
                .map(Into::into)
                .collect();
            return if list.json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no modules")
            };
        }
        ModuleCommand::Enable { name } => (name, true),
        ModuleCommand::Disable { name } => (name, false),
    };
    let mut client = Client::connect(global).await?;
    let response = client
        .admin
        .set_module(pb::SetModuleRequest {
            name: module.as_str().to_owned(),
            enabled,
        })
        .await
        .map_err(|s| client.error(s))?;
    let state = if enabled { "enabled" } else { "disabled" };
    output::print_change(
        &format!("module {} {state}", module.as_str()),
        response.get_ref().version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    #[test]
    fn enable_and_disable_parse_module_names() {
        match parse(&["drover", "module", "enable", "auth"]).command {
            Command::Module(ModuleCommand::Enable { name }) => assert_eq!(name, Module::Auth),
            other => panic!("unexpected {other:?}"),
        }
        match parse(&["drover", "module", "disable", "rate-limit"]).command {
            Command::Module(ModuleCommand::Disable { name }) => assert_eq!(name, Module::RateLimit),
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_err(&["drover", "module", "enable", "telepathy"]);
        assert!(
            err.contains(
                "unknown module \"telepathy\"; expected one of auth, rate_limit, spend_cap, audit, redact"
            ),
            "{err}"
        );
        assert!(matches!(
            parse(&["drover", "module", "list", "--json"]).command,
            Command::Module(ModuleCommand::List(ListArgs { json: true }))
        ));
    }

    #[test]
    fn list_output() {
        let rows: Vec<ModuleRow> = Module::ALL
            .into_iter()
            .map(|m| {
                ModuleRow::from(pb::Module {
                    name: m.as_str().into(),
                    enabled: m == Module::Auth,
                    available: m == Module::Audit,
                })
            })
            .collect();
        assert_eq!(
            table(&rows).render(),
            "MODULE      STATE  AVAILABLE\n\
             auth        on     no (not implemented in this version)\n\
             rate_limit  off    no (not implemented in this version)\n\
             spend_cap   off    no (not implemented in this version)\n\
             audit       off    yes\n\
             redact      off    no (not implemented in this version)\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"name": "auth", "enabled": true, "available": false})
        );
        assert_eq!(json[3]["available"], true);
        assert_eq!(json.as_array().unwrap().len(), 5);
    }
}
