//! `drover limit`: rate limits of a tenant or a key (the `rate_limit` module). Set, list, remove.
//! Limits are stored whether or not the module is on; see docs/limits-and-caps.md.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use drover_proto::model::{
    MAX_CONCURRENCY_LIMIT, MAX_RATE_LIMIT, validate_concurrency_limit, validate_key_id, validate_rate_limit,
    validate_tenant_name,
};
use drover_proto::pb;
use serde::Serialize;

use crate::client::{self, Client, GlobalArgs};
use crate::output::{self, Table};

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Set rate limits of a tenant (all its keys together) or of one key; kinds not given stay
    /// as they are.
    Set(SetArgs),
    /// List the rate limits of every tenant and key, or of one tenant and its keys.
    List {
        /// Only the limits of this tenant and its keys.
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove rate limits of a tenant or key: the kinds given, or all of them.
    Remove {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Remove the requests-per-minute limit.
        #[arg(long)]
        rpm: bool,
        /// Remove the tokens-per-minute limit.
        #[arg(long)]
        tpm: bool,
        /// Remove the concurrency limit.
        #[arg(long)]
        concurrency: bool,
    },
}

/// Whose limit or cap: `--tenant NAME` or `--key ID`, exactly one.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// The tenant, by name (a limit on all its keys together).
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<String>,
    /// The key, by id (key_...).
    #[arg(long, value_parser = parse_key_id)]
    pub key: Option<String>,
}

impl ScopeArgs {
    pub fn wire(&self) -> pb::LimitScope {
        let scope = match (&self.tenant, &self.key) {
            (Some(tenant), _) => pb::limit_scope::Scope::Tenant(tenant.clone()),
            (None, key) => pb::limit_scope::Scope::KeyId(key.clone().unwrap_or_default()),
        };
        pb::LimitScope { scope: Some(scope) }
    }

    /// `tenant acme` or `key key_…`, for the line that confirms a change.
    pub fn describe(&self) -> String {
        match (&self.tenant, &self.key) {
            (Some(tenant), _) => format!("tenant {tenant}"),
            (None, key) => format!("key {}", key.as_deref().unwrap_or_default()),
        }
    }
}

pub fn parse_tenant(raw: &str) -> Result<String, String> {
    validate_tenant_name("tenant", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

pub fn parse_key_id(raw: &str) -> Result<String, String> {
    validate_key_id("key", raw).map_err(|e| e.reason)?;
    Ok(raw.to_owned())
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    // Numbers are taken as text (negative ones included) and checked after parsing, so that
    // `--rpm -5` is refused as a limit, in one line, and not as an unknown option.
    /// Requests per minute, 1 to 10^12.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    rpm: Option<String>,
    /// Tokens (input and output) per minute, 1 to 10^12.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    tpm: Option<String>,
    /// Requests in flight at once, across every data plane, 1 to 1,000,000.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    concurrency: Option<String>,
    /// Print the scope's limits after the change as JSON.
    #[arg(long)]
    json: bool,
}

/// A whole number given to `flag` that must be from 1 to `max`.
fn whole(flag: &str, raw: &str, max: u64) -> anyhow::Result<u64> {
    let n: i128 = raw
        .parse()
        .map_err(|_| anyhow!("{flag}: {raw:?} is not a whole number"))?;
    u64::try_from(n)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| anyhow!("{flag}: {n} is not a limit: it must be from 1 to {max}"))
}

fn rate(flag: &str, raw: &str) -> anyhow::Result<u64> {
    let n = whole(flag, raw, MAX_RATE_LIMIT)?;
    Ok(validate_rate_limit(flag, n)?.get())
}

fn concurrency(flag: &str, raw: &str) -> anyhow::Result<u32> {
    let n = whole(flag, raw, u64::from(MAX_CONCURRENCY_LIMIT))?;
    let n = u32::try_from(n)?;
    Ok(validate_concurrency_limit(flag, n)?.get())
}

impl SetArgs {
    /// The request, checked with the control plane's own rules.
    fn to_request(&self) -> anyhow::Result<pb::SetLimitRequest> {
        if self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none() {
            bail!("no limit given: set at least one of --rpm, --tpm and --concurrency");
        }
        Ok(pb::SetLimitRequest {
            scope: Some(self.scope.wire()),
            rpm: self.rpm.as_deref().map(|r| rate("--rpm", r)).transpose()?,
            tpm: self.tpm.as_deref().map(|r| rate("--tpm", r)).transpose()?,
            concurrency: self
                .concurrency
                .as_deref()
                .map(|r| concurrency("--concurrency", r))
                .transpose()?,
        })
    }
}

/// The limits of one tenant or key, in `limit list --json` and `limit set --json`; `null`: no
/// limit of that kind.
#[derive(Debug, Serialize)]
pub struct LimitRow {
    pub tenant: String,
    /// The key's id; `null` for the tenant's own limits.
    pub key: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u32>,
}

impl From<pb::LimitInfo> for LimitRow {
    fn from(l: pb::LimitInfo) -> Self {
        let key = match l.scope.and_then(|s| s.scope) {
            Some(pb::limit_scope::Scope::KeyId(id)) => Some(id),
            _ => None,
        };
        LimitRow {
            tenant: l.tenant,
            key,
            rpm: (l.rpm != 0).then_some(l.rpm),
            tpm: (l.tpm != 0).then_some(l.tpm),
            concurrency: (l.concurrency != 0).then_some(l.concurrency),
        }
    }
}

impl LimitRow {
    /// `rpm 600, concurrency 4`: the limits it has.
    fn summary(&self) -> String {
        let kinds = [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("concurrency", self.concurrency.map(u64::from)),
        ];
        kinds
            .iter()
            .filter_map(|(name, v)| v.map(|v| format!("{name} {v}")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn cell<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn table(rows: &[LimitRow]) -> Table {
    let mut t = Table::new(["TENANT", "KEY", "RPM", "TPM", "CONCURRENCY"]);
    for r in rows {
        t.row([
            r.tenant.clone(),
            cell(r.key.clone()),
            cell(r.rpm),
            cell(r.tpm),
            cell(r.concurrency),
        ]);
    }
    t
}

/// What `limit remove` removed, for the line that confirms it.
fn removed_kinds(rpm: bool, tpm: bool, concurrency: bool) -> String {
    let kinds: Vec<&str> = [("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency)]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
    if kinds.is_empty() {
        "limits".to_owned()
    } else {
        format!("{} limit", kinds.join(", "))
    }
}

pub async fn run(command: LimitCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let request = match &command {
        LimitCommand::Set(args) => Some(args.to_request()?),
        _ => None,
    };
    let mut client = Client::connect(global).await?;
    match command {
        LimitCommand::Set(args) => {
            let response = client
                .admin
                .set_limit(request.unwrap_or_default())
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let row = LimitRow::from(response.limit.unwrap_or_default());
            if args.json {
                output::print(&output::json(&row)?)
            } else {
                output::print_change(
                    &format!("limits of {} set: {}", args.scope.describe(), row.summary()),
                    response.version,
                )
            }
        }
        LimitCommand::List { tenant, json } => {
            let admin = client.admin.clone();
            let rows = client::all_pages(|page_token| {
                let mut admin = admin.clone();
                let tenant = tenant.clone().unwrap_or_default();
                async move {
                    let page = admin
                        .list_limits(pb::ListLimitsRequest {
                            tenant,
                            page_size: client::PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.limits, page.next_page_token))
                }
            })
            .await
            .map_err(|s| client.error(s))?;
            let rows: Vec<_> = rows.into_iter().map(LimitRow::from).collect();
            if json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no limits")
            }
        }
        LimitCommand::Remove {
            scope,
            rpm,
            tpm,
            concurrency,
        } => {
            let response = client
                .admin
                .remove_limit(pb::RemoveLimitRequest {
                    scope: Some(scope.wire()),
                    rpm,
                    tpm,
                    concurrency,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            output::print_change(
                &format!(
                    "{} of {} removed",
                    removed_kinds(rpm, tpm, concurrency),
                    scope.describe()
                ),
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

    fn set_args(argv: &[&str]) -> SetArgs {
        match parse(argv).command {
            Command::Limit(LimitCommand::Set(args)) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn set_takes_one_scope_and_checks_each_limit() {
        let args = set_args(&[
            "drover", "limit", "set", "--tenant", "acme", "--rpm", "600", "--json",
        ]);
        let request = args.to_request().unwrap();
        assert_eq!(
            request.scope.unwrap().scope,
            Some(pb::limit_scope::Scope::Tenant("acme".into()))
        );
        assert_eq!(
            (request.rpm, request.tpm, request.concurrency),
            (Some(600), None, None)
        );
        assert!(args.json);
        let args = set_args(&[
            "drover",
            "limit",
            "set",
            "--key",
            "key_0123456789abcdEF",
            "--tpm",
            "1000",
            "--concurrency",
            "4",
        ]);
        let request = args.to_request().unwrap();
        assert_eq!((request.tpm, request.concurrency), (Some(1000), Some(4)));
        assert_eq!(args.scope.describe(), "key key_0123456789abcdEF");

        let refused = |argv: &[&str]| set_args(argv).to_request().unwrap_err().to_string();
        assert_eq!(
            refused(&["drover", "limit", "set", "--tenant", "acme", "--rpm", "0"]),
            "--rpm: 0 is not a limit: it must be from 1 to 1000000000000"
        );
        assert_eq!(
            refused(&["drover", "limit", "set", "--tenant", "acme", "--tpm", "-5"]),
            "--tpm: -5 is not a limit: it must be from 1 to 1000000000000"
        );
        assert_eq!(
            refused(&[
                "drover",
                "limit",
                "set",
                "--tenant",
                "acme",
                "--concurrency",
                "1000001"
            ]),
            "--concurrency: 1000001 is not a limit: it must be from 1 to 1000000"
        );
        assert_eq!(
            refused(&["drover", "limit", "set", "--tenant", "acme", "--rpm", "ten"]),
            "--rpm: \"ten\" is not a whole number"
        );
        assert!(refused(&["drover", "limit", "set", "--tenant", "acme"]).contains("no limit given"));

        assert!(parse_err(&["drover", "limit", "set", "--rpm", "5"]).contains("--tenant"));
        assert!(
            parse_err(&[
                "drover",
                "limit",
                "set",
                "--tenant",
                "acme",
                "--key",
                "key_0123456789abcdEF",
                "--rpm",
                "5"
            ])
            .contains("cannot be used with")
        );
        assert!(
            parse_err(&["drover", "limit", "set", "--key", "sk-1", "--rpm", "5"]).contains("not a key id")
        );
        assert!(parse_err(&["drover", "limit", "list", "--tenant", "Acme"]).contains("tenant name"));
    }

    #[test]
    fn remove_names_what_it_removes() {
        match parse(&["drover", "limit", "remove", "--tenant", "acme", "--rpm"]).command {
            Command::Limit(LimitCommand::Remove {
                rpm,
                tpm,
                concurrency,
                ..
            }) => {
                assert_eq!((rpm, tpm, concurrency), (true, false, false));
                assert_eq!(removed_kinds(rpm, tpm, concurrency), "rpm limit");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(removed_kinds(false, false, false), "limits");
        assert_eq!(removed_kinds(true, false, true), "rpm, concurrency limit");
    }

    #[test]
    fn list_output() {
        let scope = |s| Some(pb::LimitScope { scope: Some(s) });
        let rows = vec![
            LimitRow::from(pb::LimitInfo {
                scope: scope(pb::limit_scope::Scope::Tenant("acme".into())),
                tenant: "acme".into(),
                rpm: 600,
                tpm: 0,
                concurrency: 0,
            }),
            LimitRow::from(pb::LimitInfo {
                scope: scope(pb::limit_scope::Scope::KeyId("key_0123456789abcdEF".into())),
                tenant: "acme".into(),
                rpm: 0,
                tpm: 90_000,
                concurrency: 4,
            }),
        ];
        assert_eq!(
            table(&rows).render(),
            "TENANT  KEY                   RPM  TPM    CONCURRENCY\n\
             acme    -                     600  -      -\n\
             acme    key_0123456789abcdEF  -    90000  4\n"
        );
        assert_eq!(rows[1].summary(), "tpm 90000, concurrency 4");
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(json[0]["key"], serde_json::Value::Null);
        assert_eq!(json[0]["rpm"], 600);
        assert_eq!(json[0]["tpm"], serde_json::Value::Null);
        assert_eq!(json[1]["key"], "key_0123456789abcdEF");
    }
}
