//! `drover cap`: spend caps of a tenant or a key (the `spend_cap` module), one per UTC period.
//! Set, list (with what was spent in the current period and what remains), remove. Amounts are
//! USD, parsed exactly into nano-USD (never through a float); see docs/limits-and-caps.md.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use drover_proto::model::{CapPeriod, MAX_CAP_NANO_USD, validate_soft_at};
use drover_proto::pb;
use serde::Serialize;

use super::limit::{ScopeArgs, parse_tenant};
use crate::client::{self, Client, GlobalArgs};
use crate::output::{self, Table, nano_usd};

/// Nano-USD in one USD.
const NANO_PER_USD: i64 = 1_000_000_000;
/// Decimal places of an amount: nano-USD is the smallest unit.
const MAX_USD_DECIMALS: usize = 9;

#[derive(Debug, Subcommand)]
pub enum CapCommand {
    /// Set the spend cap of a tenant (all its keys together) or of one key for one period,
    /// replacing the cap it had for that period.
    Set(SetArgs),
    /// List caps with what was spent in their current period and what remains, in USD.
    List {
        /// Only the caps of this tenant and its keys.
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the cap of one period of a tenant or key, or all its caps.
    Remove {
        #[command(flatten)]
        scope: ScopeArgs,
        /// The period whose cap to remove: day, month or total; default: every period.
        #[arg(long, value_parser = parse_period)]
        period: Option<CapPeriod>,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    // Taken as text and checked after parsing: exact decimal arithmetic, and `--usd -5` is
    // refused as an amount, in one line, not as an unknown option.
    /// The cap in USD: a decimal such as 25 or 0.50, at most 9 decimal places, more than 0 and
    /// at most 1,000,000.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    usd: String,
    /// day (resets at 00:00 UTC), month (at 00:00 UTC on the 1st) or total (never resets).
    #[arg(long, value_parser = parse_period)]
    period: CapPeriod,
    /// From this fraction of the cap on (e.g. 0.8), responses carry x-drover-spend-warning.
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    soft_at: Option<String>,
    /// Let models without a price through under this cap (their cost counts as 0).
    #[arg(long)]
    allow_unpriced: bool,
    /// Print the cap, with its period's spend, as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_period(raw: &str) -> Result<CapPeriod, String> {
    CapPeriod::parse(raw).ok_or_else(|| format!("{raw:?} is not a period: day, month or total"))
}

/// Parses an amount of USD exactly into nano-USD: digits, optionally a point and at most nine
/// more digits. A cap must be more than 0 and at most [`MAX_CAP_NANO_USD`].
pub fn parse_usd(raw: &str) -> Result<i64, String> {
    let garbage = || format!("{raw:?} is not an amount of USD, such as 25 or 0.50");
    let (negative, body) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (whole, fraction) = match body.split_once('.') {
        Some((w, f)) if !f.is_empty() => (w, f),
        Some(_) => return Err(garbage()),
        None => (body, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(garbage());
    }
    if fraction.len() > MAX_USD_DECIMALS {
        return Err(format!(
            "{raw} has more than {MAX_USD_DECIMALS} decimal places (the smallest amount is 0.000000001 USD)"
        ));
    }
    let too_large = || {
        format!(
            "{raw} is not a cap: it must be at most {} USD",
            MAX_CAP_NANO_USD / NANO_PER_USD
        )
    };
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction: i64 = format!("{fraction:0<9}").parse().map_err(|_| garbage())?;
    let nano = whole
        .checked_mul(NANO_PER_USD)
        .and_then(|n| n.checked_add(fraction))
        .ok_or_else(too_large)?;
    if negative || nano == 0 {
        return Err(format!("{raw} is not a cap: it must be more than 0 USD"));
    }
    if nano > MAX_CAP_NANO_USD {
        return Err(too_large());
    }
    Ok(nano)
}

/// Parses `--soft-at`: a fraction strictly between 0 and 1.
fn parse_soft_at(raw: &str) -> anyhow::Result<f64> {
    let value: f64 = raw
        .parse()
        .map_err(|_| anyhow!("--soft-at: {raw:?} is not a number"))?;
    validate_soft_at("--soft-at", value)?
        .ok_or_else(|| anyhow!("--soft-at: {raw} is not a fraction between 0 and 1 (both excluded)"))
}

impl SetArgs {
    /// The request, checked with the control plane's own rules.
    fn to_request(&self) -> anyhow::Result<pb::SetCapRequest> {
        let limit_nano_usd = parse_usd(&self.usd).map_err(|e| anyhow!("--usd: {e}"))?;
        Ok(pb::SetCapRequest {
            scope: Some(self.scope.wire()),
            period: pb::CapPeriod::from(self.period).into(),
            limit_nano_usd,
            soft_at: self
                .soft_at
                .as_deref()
                .map(parse_soft_at)
                .transpose()?
                .unwrap_or(0.0),
            allow_unpriced: self.allow_unpriced,
        })
    }
}

fn period_name(period: i32) -> &'static str {
    match pb::CapPeriod::try_from(period) {
        Ok(pb::CapPeriod::Day) => "day",
        Ok(pb::CapPeriod::Month) => "month",
        Ok(pb::CapPeriod::Total) => "total",
        _ => "unknown",
    }
}

/// A cap in `cap list --json` and `cap set --json`: amounts exactly, as nano-USD and as USD.
#[derive(Debug, Serialize)]
pub struct CapRow {
    pub tenant: String,
    /// The key's id; `null` for the tenant's own cap.
    pub key: Option<String>,
    pub period: &'static str,
    pub limit_nano_usd: i64,
    pub limit_usd: String,
    /// Settled spend in the current period.
    pub spent_nano_usd: i64,
    pub spent_usd: String,
    pub remaining_nano_usd: i64,
    pub remaining_usd: String,
    /// `null`: no soft cap.
    pub soft_at: Option<f64>,
    pub allow_unpriced: bool,
    pub period_start: String,
    /// `null` for a total cap, which never resets.
    pub period_end: Option<String>,
}

impl From<pb::CapInfo> for CapRow {
    fn from(c: pb::CapInfo) -> Self {
        let key = match c.scope.and_then(|s| s.scope) {
            Some(pb::limit_scope::Scope::KeyId(id)) => Some(id),
            _ => None,
        };
        CapRow {
            tenant: c.tenant,
            key,
            period: period_name(c.period),
            limit_nano_usd: c.limit_nano_usd,
            limit_usd: nano_usd(c.limit_nano_usd),
            spent_nano_usd: c.spent_nano_usd,
            spent_usd: nano_usd(c.spent_nano_usd),
            remaining_nano_usd: c.remaining_nano_usd,
            remaining_usd: nano_usd(c.remaining_nano_usd),
            soft_at: (c.soft_at != 0.0).then_some(c.soft_at),
            allow_unpriced: c.allow_unpriced,
            period_start: output::utc_time(c.period_start_unix_ms),
            period_end: output::utc_time_opt(c.period_end_unix_ms),
        }
    }
}

fn table(rows: &[CapRow]) -> Table {
    let mut t = Table::new([
        "TENANT",
        "KEY",
        "PERIOD",
        "CAP USD",
        "SPENT USD",
        "REMAINING USD",
        "SOFT AT",
        "UNPRICED",
        "RESETS",
    ]);
    for r in rows {
        t.row([
            r.tenant.clone(),
            r.key.clone().unwrap_or_else(|| "-".into()),
            r.period.to_owned(),
            r.limit_usd.clone(),
            r.spent_usd.clone(),
            r.remaining_usd.clone(),
            r.soft_at.map_or_else(|| "-".into(), |f| f.to_string()),
            if r.allow_unpriced { "allowed" } else { "refused" }.to_owned(),
            r.period_end.clone().unwrap_or_else(|| "never".into()),
        ]);
    }
    t
}

fn per(period: &str) -> String {
    if period == "total" {
        "in total".to_owned()
    } else {
        format!("per {period}")
    }
}

pub async fn run(command: CapCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let request = match &command {
        CapCommand::Set(args) => Some(args.to_request()?),
        _ => None,
    };
    let mut client = Client::connect(global).await?;
    match command {
        CapCommand::Set(args) => {
            let response = client
                .admin
                .set_cap(request.unwrap_or_default())
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let row = CapRow::from(response.cap.unwrap_or_default());
            if args.json {
                output::print(&output::json(&row)?)
            } else {
                output::print_change(
                    &format!(
                        "cap of {} set: {} USD {}",
                        args.scope.describe(),
                        row.limit_usd,
                        per(row.period)
                    ),
                    response.version,
                )
            }
        }
        CapCommand::List { tenant, json } => {
            let admin = client.admin.clone();
            let rows = client::all_pages(|page_token| {
                let mut admin = admin.clone();
                let tenant = tenant.clone().unwrap_or_default();
                async move {
                    let page = admin
                        .list_caps(pb::ListCapsRequest {
                            tenant,
                            page_size: client::PAGE_SIZE,
                            page_token,
                        })
                        .await?
                        .into_inner();
                    Ok((page.caps, page.next_page_token))
                }
            })
            .await
            .map_err(|s| client.error(s))?;
            let rows: Vec<_> = rows.into_iter().map(CapRow::from).collect();
            if json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no caps")
            }
        }
        CapCommand::Remove { scope, period } => {
            let response = client
                .admin
                .remove_cap(pb::RemoveCapRequest {
                    scope: Some(scope.wire()),
                    period: period.map_or(0, |p| pb::CapPeriod::from(p).into()),
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let what = match period {
                Some(p) => format!("{} cap", p.as_str()),
                None => "caps".to_owned(),
            };
            output::print_change(
                &format!("{what} of {} removed", scope.describe()),
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
    fn usd_is_parsed_exactly() {
        let cases = [
            ("25", 25_000_000_000),
            ("0.50", 500_000_000),
            (".5", 500_000_000),
            ("0.000000001", 1),
            ("1.123456789", 1_123_456_789),
            ("007.1", 7_100_000_000),
            ("1000000", MAX_CAP_NANO_USD),
            ("999999.999999999", MAX_CAP_NANO_USD - 1),
            // Exact where a float is not: 0.1 + 0.2 is not 0.3 in binary.
            ("0.3", 300_000_000),
        ];
        for (raw, nano) in cases {
            assert_eq!(parse_usd(raw), Ok(nano), "{raw}");
        }
        let refused = |raw: &str| parse_usd(raw).unwrap_err();
        for zero in ["0", "0.0", "0.000000000", "-0"] {
            assert!(refused(zero).contains("must be more than 0 USD"), "{zero}");
        }
        for negative in ["-5", "-0.01"] {
            assert_eq!(
                refused(negative),
                format!("{negative} is not a cap: it must be more than 0 USD")
            );
        }
        assert_eq!(
            refused("0.0000000001"),
            "0.0000000001 has more than 9 decimal places (the smallest amount is 0.000000001 USD)"
        );
        for large in [
            "1000000.000000001",
            "1000001",
            "99999999999999999999",
            "9223372037",
        ] {
            assert!(refused(large).contains("at most 1000000 USD"), "{large}");
        }
        for garbage in [
            "", "abc", "1e3", "1,5", "+5", " 5", "5.", ".", "1.2.3", "$5", "0x10", "--5", "١",
        ] {
            assert_eq!(
                refused(garbage),
                format!("{garbage:?} is not an amount of USD, such as 25 or 0.50"),
                "{garbage}"
            );
        }
    }

    fn set_args(argv: &[&str]) -> SetArgs {
        match parse(argv).command {
            Command::Cap(CapCommand::Set(args)) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn set_checks_amount_period_and_soft_cap() {
        let args = set_args(&[
            "drover",
            "cap",
            "set",
            "--tenant",
            "acme",
            "--usd",
            "10",
            "--period",
            "month",
            "--soft-at",
            "0.8",
            "--allow-unpriced",
        ]);
        let request = args.to_request().unwrap();
        assert_eq!(request.limit_nano_usd, 10 * NANO_PER_USD);
        assert_eq!(request.period, pb::CapPeriod::Month as i32);
        assert_eq!(request.soft_at, 0.8);
        assert!(request.allow_unpriced);

        let refused = |usd: &str, soft: &str| {
            set_args(&[
                "drover",
                "cap",
                "set",
                "--key",
                "key_0123456789abcdEF",
                "--usd",
                usd,
                "--period",
                "day",
                "--soft-at",
                soft,
            ])
            .to_request()
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            refused("-5", "0.5"),
            "--usd: -5 is not a cap: it must be more than 0 USD"
        );
        for soft in ["1", "1.0", "-0.5", "0", "2"] {
            assert!(
                refused("5", soft).starts_with("--soft-at: ")
                    && refused("5", soft).contains("between 0 and 1"),
                "{soft}: {}",
                refused("5", soft)
            );
        }
        assert_eq!(refused("5", "most"), "--soft-at: \"most\" is not a number");

        assert!(
            parse_err(&[
                "drover", "cap", "set", "--tenant", "acme", "--usd", "5", "--period", "week"
            ])
            .contains("is not a period: day, month or total")
        );
        assert!(parse_err(&["drover", "cap", "set", "--tenant", "acme", "--usd", "5"]).contains("--period"));
        assert!(parse_err(&["drover", "cap", "set", "--usd", "5", "--period", "day"]).contains("--tenant"));
    }

    #[test]
    fn remove_takes_an_optional_period() {
        match parse(&["drover", "cap", "remove", "--tenant", "acme", "--period", "total"]).command {
            Command::Cap(CapCommand::Remove { period, scope }) => {
                assert_eq!(period, Some(CapPeriod::Total));
                assert_eq!(scope.describe(), "tenant acme");
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse(&["drover", "cap", "remove", "--key", "key_0123456789abcdEF"]).command {
            Command::Cap(CapCommand::Remove { period, .. }) => assert_eq!(period, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_output() {
        let rows = vec![CapRow::from(pb::CapInfo {
            scope: Some(pb::LimitScope {
                scope: Some(pb::limit_scope::Scope::Tenant("acme".into())),
            }),
            tenant: "acme".into(),
            period: pb::CapPeriod::Day.into(),
            limit_nano_usd: 10 * NANO_PER_USD,
            soft_at: 0.8,
            allow_unpriced: false,
            spent_nano_usd: 2_500_000_001,
            remaining_nano_usd: 7_499_999_999,
            period_start_unix_ms: 1_764_979_200_000,
            period_end_unix_ms: 1_765_065_600_000,
        })];
        assert_eq!(
            table(&rows).render(),
            "TENANT  KEY  PERIOD  CAP USD    SPENT USD    REMAINING USD  SOFT AT  UNPRICED  RESETS\n\
             acme    -    day     10.000000  2.500000001  7.499999999    0.8      refused   2025-12-07T00:00:00Z\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(json[0]["spent_usd"], "2.500000001");
        assert_eq!(json[0]["remaining_nano_usd"], 7_499_999_999_i64);
        assert_eq!(json[0]["key"], serde_json::Value::Null);
        assert_eq!(json[0]["period_start"], "2025-12-06T00:00:00Z");
        assert_eq!(per("total"), "in total");
    }
}
