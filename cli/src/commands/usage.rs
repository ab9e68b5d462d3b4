//! `drover usage`: requests, tokens and cost from the control plane's usage ledger, filtered and
//! grouped, as a table (with a TOTAL row), JSON or CSV. Money arrives as integer nano-USD and is
//! printed from the integers, so every figure is exact.

use clap::{Args, ValueEnum};
use drover_proto::model::{MAX_USAGE_TIME_UNIX_MS, UtcDay};
use drover_proto::pb;
use serde::Serialize;

use crate::client::{Client, GlobalArgs};
use crate::output::{self, Table, nano_usd};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this tenant.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,

    /// Only this virtual key (its id).
    #[arg(long = "key", value_name = "ID")]
    key: Option<String>,

    /// Only this model, as the provider knows it.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,

    /// From this time on, inclusive: YYYY-MM-DD (midnight UTC) or RFC 3339
    /// (2026-11-01T09:30:00Z, 2026-11-01T10:30:00+01:00).
    #[arg(long, value_name = "DATE", value_parser = parse_time)]
    since: Option<i64>,

    /// Up to this time, exclusive: YYYY-MM-DD (midnight UTC) or RFC 3339. `--since 2026-11-01
    /// --until 2026-11-02` is the 1st of November.
    #[arg(long, value_name = "DATE", value_parser = parse_time)]
    until: Option<i64>,

    /// One row per model, key, day (UTC), provider or tenant; without it, the total only.
    #[arg(long = "by", value_enum, value_name = "GROUP")]
    by: Option<By>,

    /// Print a JSON object `{rows, total}` instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,

    /// Print CSV (a header line, then one line per row; no total line) instead of a table.
    #[arg(long)]
    csv: bool,
}

/// What `--by` groups on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    Model,
    Key,
    Day,
    Provider,
    Tenant,
}

impl By {
    fn to_wire(self) -> pb::UsageGroupBy {
        match self {
            By::Model => pb::UsageGroupBy::Model,
            By::Key => pb::UsageGroupBy::Key,
            By::Day => pb::UsageGroupBy::Day,
            By::Provider => pb::UsageGroupBy::Provider,
            By::Tenant => pb::UsageGroupBy::Tenant,
        }
    }

    fn header(self) -> &'static str {
        match self {
            By::Model => "MODEL",
            By::Key => "KEY",
            By::Day => "DAY",
            By::Provider => "PROVIDER",
            By::Tenant => "TENANT",
        }
    }
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time into Unix milliseconds.
/// Fractions of a second beyond milliseconds are dropped.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{text:?} is not a date: expected YYYY-MM-DD (midnight UTC) or RFC 3339, e.g. \
             2026-11-01T09:30:00Z"
        )
    };
    let date = text.get(..10).and_then(UtcDay::parse).ok_or_else(bad)?;
    let ms = if text.len() == 10 {
        date.start_unix_ms()
    } else {
        let rest = text.get(10..).ok_or_else(bad)?;
        let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
        date.start_unix_ms() + time_of_day(rest).ok_or_else(bad)?
    };
    if !(0..MAX_USAGE_TIME_UNIX_MS).contains(&ms) {
        return Err(format!("{text:?} is outside 1970-01-01..9999-12-31"));
    }
    Ok(ms)
}

/// `HH:MM:SS[.fraction](Z|±HH:MM)` → milliseconds since midnight UTC (may be negative or past
/// a day with an offset).
fn time_of_day(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 9 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (h, m, s) = (num(0..2)?, num(3..5)?, num(6..8)?);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut rest = &text[8..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = first3.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let b = rest.as_bytes();
            let digit = |i: usize| {
                b.get(i)
                    .filter(|c| c.is_ascii_digit())
                    .map(|c| i64::from(c - b'0'))
            };
            if b.len() != 6 || b[3] != b':' {
                return None;
            }
            let (oh, om) = (digit(1)? * 10 + digit(2)?, digit(4)? * 10 + digit(5)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
    };
    Some(((h * 60 + m - offset_minutes) * 60 + s) * 1000 + millis)
}

impl UsageArgs {
    /// The query, checked before connecting.
    fn to_query(&self) -> anyhow::Result<pb::UsageQuery> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && until <= since
        {
            anyhow::bail!("--until must be after --since (the range is [since, until))");
        }
        Ok(pb::UsageQuery {
            tenant: self.tenant.clone().unwrap_or_default(),
            key_id: self.key.clone().unwrap_or_default(),
            model: self.model.clone().unwrap_or_default(),
            since_unix_ms: self.since.unwrap_or(0),
            until_unix_ms: self.until.unwrap_or(0),
            group_by: self.by.map_or(pb::UsageGroupBy::Unspecified, By::to_wire) as i32,
        })
    }
}

/// One row of `usage --json` and `--csv`. Money is exact both ways: integer nano-USD, and the
/// same amount as a decimal string of USD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The group (model, key id, `YYYY-MM-DD`, provider or tenant); empty for the total.
    pub group: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cost_nano_usd: i64,
    pub cost_usd: String,
    pub cache_hits: u64,
    pub saved_nano_usd: i64,
    pub saved_usd: String,
    pub failed: u64,
    pub unpriced: u64,
}

impl From<&pb::UsageRow> for UsageRow {
    fn from(r: &pb::UsageRow) -> Self {
        UsageRow {
            group: r.group.clone(),
            requests: r.requests,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cost_nano_usd: r.cost_nano_usd,
            cost_usd: nano_usd(r.cost_nano_usd),
            cache_hits: r.cache_hits,
            saved_nano_usd: r.saved_nano_usd,
            saved_usd: nano_usd(r.saved_nano_usd),
            failed: r.failed,
            unpriced: r.unpriced,
        }
    }
}

/// `usage --json`.
#[derive(Debug, Serialize)]
pub struct UsageView {
    pub rows: Vec<UsageRow>,
    pub total: UsageRow,
}

impl From<&pb::UsageReport> for UsageView {
    fn from(r: &pb::UsageReport) -> Self {
        UsageView {
            rows: r.rows.iter().map(UsageRow::from).collect(),
            total: UsageRow::from(&r.total.clone().unwrap_or_default()),
        }
    }
}

impl UsageView {
    fn table(&self, by: Option<By>) -> Table {
        let mut t = Table::new([
            by.map_or("", By::header),
            "REQUESTS",
            "INPUT",
            "OUTPUT",
            "CACHED",
            "COST USD",
            "CACHE HITS",
            "FAILED",
            "UNPRICED",
        ]);
        let line = |group: String, r: &UsageRow| {
            [
                group,
                r.requests.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.cached_input_tokens.to_string(),
                r.cost_usd.clone(),
                r.cache_hits.to_string(),
                r.failed.to_string(),
                r.unpriced.to_string(),
            ]
        };
        if by.is_some() {
            for r in &self.rows {
                let group = if r.group.is_empty() {
                    "-".to_owned()
                } else {
                    r.group.clone()
                };
                t.row(line(group, r));
            }
        }
        t.row(line("TOTAL".to_owned(), &self.total));
        t
    }

    fn csv(&self) -> String {
        let mut out = String::from(
            "group,requests,input_tokens,output_tokens,cached_input_tokens,cost_nano_usd,cost_usd,\
             cache_hits,saved_nano_usd,saved_usd,failed,unpriced\n",
        );
        for r in &self.rows {
            let fields = [
                csv_field(&r.group),
                r.requests.to_string(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                r.cached_input_tokens.to_string(),
                r.cost_nano_usd.to_string(),
                r.cost_usd.clone(),
                r.cache_hits.to_string(),
                r.saved_nano_usd.to_string(),
                r.saved_usd.clone(),
                r.failed.to_string(),
                r.unpriced.to_string(),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

pub async fn run(args: UsageArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let query = args.to_query()?;
    let mut client = Client::connect(global).await?;
    let report = client
        .admin
        .query_usage(query)
        .await
        .map_err(|s| client.error(s))?
        .into_inner();
    let view = UsageView::from(&report);
    if args.json {
        output::print(&output::json(&view)?)
    } else if args.csv {
        output::print(&view.csv())
    } else {
        output::print(&view.table(args.by).render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    /// 2026-11-01T00:00Z.
    const NOV_1: i64 = 1_793_491_200_000;

    fn usage(args: &[&str]) -> UsageArgs {
        let mut argv = vec!["drover", "usage"];
        argv.extend_from_slice(args);
        match parse(&argv).command {
            Command::Usage(a) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dates_are_utc_days_or_rfc3339() {
        let cases = [
            ("2026-11-01", NOV_1),
            ("2026-11-01T00:00:00Z", NOV_1),
            ("2026-11-01t09:30:00z", NOV_1 + 9 * 3_600_000 + 30 * 60_000),
            ("2026-11-01T09:30:00.5Z", NOV_1 + 34_200_500),
            ("2026-11-01T09:30:00.123456789Z", NOV_1 + 34_200_123),
            ("2026-11-01 10:30:00+01:00", NOV_1 + 34_200_000),
            ("2026-11-01T00:00:00-05:30", NOV_1 + 19_800_000),
            ("2026-11-01T00:00:00+01:00", NOV_1 - 3_600_000),
            ("1970-01-01", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_time(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-11-31",
            "2026-11-01T",
            "2026-11-01T25:00:00Z",
            "2026-11-01T09:30:00",
            "2026-11-01T09:30Z",
            "2026-11-01T09:30:00.Z",
            "2026-11-01T09:30:00+1:00",
            "2026-11-01T09:30:00+01:0a",
            "2026-11-01X09:30:00Z",
            "1969-12-31",
            "1970-01-01T00:00:00+00:01",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn arguments_become_the_query() {
        let a = usage(&[
            "--tenant",
            "acme",
            "--key",
            "k1",
            "--model",
            "gpt-4o",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-02T12:00:00Z",
            "--by",
            "day",
            "--csv",
        ]);
        assert!(a.csv && !a.json);
        assert_eq!(
            a.to_query().unwrap(),
            pb::UsageQuery {
                tenant: "acme".into(),
                key_id: "k1".into(),
                model: "gpt-4o".into(),
                since_unix_ms: NOV_1,
                until_unix_ms: NOV_1 + 86_400_000 + 43_200_000,
                group_by: pb::UsageGroupBy::Day as i32,
            }
        );
        assert_eq!(usage(&[]).to_query().unwrap(), pb::UsageQuery::default());
        for (by, wire) in [
            ("model", pb::UsageGroupBy::Model),
            ("key", pb::UsageGroupBy::Key),
            ("provider", pb::UsageGroupBy::Provider),
            ("tenant", pb::UsageGroupBy::Tenant),
        ] {
            assert_eq!(usage(&["--by", by]).to_query().unwrap().group_by, wire as i32);
        }
        let err = usage(&["--since", "2026-11-02", "--until", "2026-11-01"])
            .to_query()
            .unwrap_err();
        assert!(err.to_string().contains("--until must be after --since"), "{err}");
        assert!(parse_err(&["drover", "usage", "--by", "week"]).contains("--by"));
        assert!(parse_err(&["drover", "usage", "--since", "tomorrow"]).contains("is not a date"));
        assert!(parse_err(&["drover", "usage", "--json", "--csv"]).contains("--csv"));
    }

    fn report() -> pb::UsageReport {
        let row = |group: &str, requests, cost| pb::UsageRow {
            group: group.into(),
            requests,
            input_tokens: requests * 1000,
            output_tokens: requests * 10,
            cached_input_tokens: requests,
            cost_nano_usd: cost,
            cache_hits: 1,
            saved_nano_usd: 5,
            failed: 0,
            unpriced: requests - 1,
        };
        pb::UsageReport {
            rows: vec![
                row("", 1, 7),
                row("gpt-4o", 2, 1_500_000_000),
                row("m,\"x\"", 3, 123_456_789),
            ],
            total: Some(pb::UsageRow {
                cache_hits: 3,
                saved_nano_usd: 15,
                ..row("", 6, 1_623_456_796)
            }),
        }
    }

    #[test]
    fn table_has_a_total_row_and_exact_dollars() {
        let view = UsageView::from(&report());
        assert_eq!(
            view.table(Some(By::Model)).render(),
            "MODEL   REQUESTS  INPUT  OUTPUT  CACHED  COST USD     CACHE HITS  FAILED  UNPRICED\n\
             -       1         1000   10      1       0.000000007  1           0       0\n\
             gpt-4o  2         2000   20      2       1.500000     1           0       1\n\
             m,\"x\"   3         3000   30      3       0.123456789  1           0       2\n\
             TOTAL   6         6000   60      6       1.623456796  3           0       5\n"
        );
        let total_only = view.table(None).render();
        assert_eq!(total_only.lines().count(), 2);
        assert!(
            total_only.lines().nth(1).unwrap().starts_with("TOTAL  6"),
            "{total_only}"
        );
    }

    #[test]
    fn json_and_csv_carry_integers_and_strings() {
        let view = UsageView::from(&report());
        let json: serde_json::Value = serde_json::from_str(&output::json(&view).unwrap()).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 3);
        assert_eq!(json["rows"][1]["cost_nano_usd"], 1_500_000_000);
        assert_eq!(json["rows"][1]["cost_usd"], "1.500000");
        assert_eq!(json["total"]["cost_nano_usd"], 1_623_456_796);
        assert_eq!(json["total"]["cost_usd"], "1.623456796");
        assert_eq!(json["total"]["saved_usd"], "0.000000015");
        assert_eq!(json["total"]["group"], "");

        let csv = view.csv();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(
                "group,requests,input_tokens,output_tokens,cached_input_tokens,cost_nano_usd,cost_usd,\
                 cache_hits,saved_nano_usd,saved_usd,failed,unpriced"
            )
        );
        assert_eq!(
            lines.next(),
            Some(",1,1000,10,1,7,0.000000007,1,5,0.000000005,0,0")
        );
        assert_eq!(
            lines.next(),
            Some("gpt-4o,2,2000,20,2,1500000000,1.500000,1,5,0.000000005,0,1")
        );
        assert_eq!(
            lines.next(),
            Some("\"m,\"\"x\"\"\",3,3000,30,3,123456789,0.123456789,1,5,0.000000005,0,2")
        );
        assert_eq!(lines.next(), None);
    }
}
