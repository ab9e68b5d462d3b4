//! `drover status`: the policy version, and each data plane with the version it serves, the
//! providers and route targets of that version it cannot use, and its lease traffic.

use drover_proto::model::now_unix_ms;

use clap::Args;
use drover_proto::pb;
use serde::Serialize;

use crate::client::{Client, GlobalArgs};
use crate::output::{self, Table};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `status --json`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Current policy version.
    pub version: u64,
    pub store_id: String,
    pub dataplanes: Vec<DataPlaneRow>,
}

/// One data plane in `status --json`.
#[derive(Debug, Serialize)]
pub struct DataPlaneRow {
    pub id: String,
    pub http_addr: String,
    /// Peer address of its policy stream.
    pub peer: String,
    /// Version it serves; 0 if none yet.
    pub served_version: u64,
    pub connected: bool,
    /// Why it rejected the last snapshot sent; empty if it did not.
    pub last_error: String,
    /// Version of that rejected snapshot; 0 if none.
    pub rejected_version: u64,
    /// Unix time in milliseconds of the last message from it.
    pub last_seen_unix_ms: i64,
    /// Providers of the version it serves that it cannot use (requests to them get a 503).
    pub unavailable_providers: Vec<UnavailableRow>,
    /// Route targets of the version it serves that it never sends (failover skips them; a
    /// request with no other target gets a 503).
    pub unusable_targets: Vec<UnusableRow>,
    /// Its lease stream (rate limits and spend caps) since the control plane started; `null`
    /// if it never opened one.
    pub leases: Option<LeaseRow>,
}

/// What a data plane's lease streams carried, in `status --json`.
#[derive(Debug, Serialize)]
pub struct LeaseRow {
    pub streams: u64,
    pub messages: u64,
    pub asks: u64,
    /// Asks that got units, and asks that got none.
    pub granted: u64,
    pub refused: u64,
    pub holdings: u64,
}

/// A route target a data plane cannot use, in `status --json`.
#[derive(Debug, Serialize)]
pub struct UnusableRow {
    pub route: String,
    /// `provider/model`.
    pub target: String,
    /// Why, as the data plane reported it.
    pub reason: String,
}

/// A provider a data plane cannot use, in `status --json`.
#[derive(Debug, Serialize)]
pub struct UnavailableRow {
    pub provider: String,
    /// Why, as the data plane reported it (never the credential).
    pub reason: String,
}

impl From<pb::StatusResponse> for StatusView {
    fn from(s: pb::StatusResponse) -> Self {
        StatusView {
            version: s.version,
            store_id: s.store_id,
            dataplanes: s
                .dataplanes
                .into_iter()
                .map(|d| DataPlaneRow {
                    id: d.id,
                    http_addr: d.http_addr,
                    peer: d.peer,
                    served_version: d.served_version,
                    connected: d.connected,
                    last_error: d.last_error,
                    rejected_version: d.rejected_version,
                    last_seen_unix_ms: d.last_seen_unix_ms,
                    unavailable_providers: d
                        .unavailable_providers
                        .into_iter()
                        .map(|u| UnavailableRow {
                            provider: u.provider,
                            reason: u.reason,
                        })
                        .collect(),
                    unusable_targets: d
                        .unusable_targets
                        .into_iter()
                        .map(|u| UnusableRow {
                            route: u.route,
                            target: u.target,
                            reason: u.reason,
                        })
                        .collect(),
                    leases: d.leases.map(|l| LeaseRow {
                        streams: l.streams,
                        messages: l.messages,
                        asks: l.asks,
                        granted: l.granted,
                        refused: l.refused,
                        holdings: l.holdings,
                    }),
                })
                .collect(),
        }
    }
}

impl StatusView {
    /// The text form; `now_ms` is the current Unix time in milliseconds, for "last seen".
    fn render(&self, now_ms: i64) -> String {
        let connected = self.dataplanes.iter().filter(|d| d.connected).count();
        let planes = if self.dataplanes.is_empty() {
            "none".to_owned()
        } else {
            format!("{} ({connected} connected)", self.dataplanes.len())
        };
        let mut out = format!(
            "policy version  {}\nstore id        {}\ndata planes     {planes}\n",
            self.version,
            output::printable(&self.store_id)
        );
        if self.dataplanes.is_empty() {
            return out;
        }
        let mut t = Table::new([
            "ID",
            "HTTP ADDR",
            "SERVES",
            "CONNECTED",
            "LAST SEEN",
            "UNAVAILABLE",
            "LEASE MESSAGES",
            "LAST ERROR",
        ]);
        for d in &self.dataplanes {
            let serves = match d.served_version {
                0 => "nothing yet".to_owned(),
                v if v == self.version => format!("{v} (current)"),
                v => format!("{v} (behind)"),
            };
            let error = if d.last_error.is_empty() {
                "-".to_owned()
            } else {
                format!("version {} rejected: {}", d.rejected_version, d.last_error)
            };
            t.row([
                d.id.clone(),
                if d.http_addr.is_empty() {
                    "-".to_owned()
                } else {
                    d.http_addr.clone()
                },
                serves,
                if d.connected { "yes" } else { "no" }.to_owned(),
                ago(d.last_seen_unix_ms, now_ms),
                if d.unavailable_providers.is_empty() {
                    "-".to_owned()
                } else {
                    d.unavailable_providers
                        .iter()
                        .map(|u| u.provider.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                d.leases.as_ref().map_or("-".to_owned(), |l| {
                    format!("{} ({} asks, {} refused)", l.messages, l.asks, l.refused)
                }),
                error,
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
        section(
            &mut out,
            "unavailable providers (requests to them get 503)",
            self.dataplanes.iter().flat_map(|d| {
                d.unavailable_providers
                    .iter()
                    .map(move |u| format!("{}  {}: {}", d.id, u.provider, u.reason))
            }),
        );
        section(
            &mut out,
            "unusable route targets (never sent; change or remove the route)",
            self.dataplanes.iter().flat_map(|d| {
                d.unusable_targets
                    .iter()
                    .map(move |u| format!("{}  {} -> {}: {}", d.id, u.route, u.target, u.reason))
            }),
        );
        out
    }
}

/// Appends `title` and one indented, printable line per entry, unless there are none.
fn section(out: &mut String, title: &str, lines: impl Iterator<Item = String>) {
    let mut lines = lines.peekable();
    if lines.peek().is_none() {
        return;
    }
    out.push_str(&format!("\n{title}:\n"));
    for line in lines {
        out.push_str(&format!("  {}\n", output::printable(&line)));
    }
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0.
fn ago(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".to_owned();
    }
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0 => "just now".to_owned(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

pub async fn run(args: StatusArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(global).await?;
    let response = client
        .admin
        .status(pb::StatusRequest {})
        .await
        .map_err(|s| client.error(s))?;
    let view = StatusView::from(response.into_inner());
    if args.json {
        output::print(&output::json(&view)?)
    } else {
        output::print(&view.render(now_unix_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::parse;

    const NOW: i64 = 1_700_000_000_000;

    fn status() -> StatusView {
        StatusView::from(pb::StatusResponse {
            version: 7,
            store_id: "st-1".into(),
            dataplanes: vec![
                pb::DataPlaneStatus {
                    id: "dp-a".into(),
                    http_addr: "127.0.0.1:8080".into(),
                    peer: "127.0.0.1:50000".into(),
                    served_version: 7,
                    connected: true,
                    last_error: String::new(),
                    rejected_version: 0,
                    last_seen_unix_ms: NOW - 3_000,
                    unavailable_providers: vec![],
                    unusable_targets: vec![pb::UnusableTarget {
                        route: "legacy".into(),
                        target: "az/team/gpt-4o".into(),
                        reason: "\"team/gpt-4o\" cannot be used with provider kind azure".into(),
                    }],
                    leases: Some(pb::LeaseTraffic {
                        streams: 1,
                        messages: 412,
                        asks: 30,
                        granted: 27,
                        refused: 3,
                        holdings: 120,
                    }),
                },
                pb::DataPlaneStatus {
                    id: "dp-b".into(),
                    http_addr: String::new(),
                    peer: "10.0.0.2:41000".into(),
                    served_version: 6,
                    connected: false,
                    last_error: "route \"x\": bad\nthing".into(),
                    rejected_version: 7,
                    last_seen_unix_ms: NOW - 7_200_000,
                    unavailable_providers: vec![
                        pb::UnavailableProvider {
                            provider: "groq".into(),
                            reason: "environment variable GROQ_API_KEY is not set on this data plane".into(),
                        },
                        pb::UnavailableProvider {
                            provider: "local".into(),
                            reason: "environment variable HOME is not allowed".into(),
                        },
                    ],
                    unusable_targets: vec![],
                    leases: None,
                },
            ],
        })
    }

    #[test]
    fn parses() {
        assert!(matches!(
            parse(&["drover", "status"]).command,
            Command::Status(StatusArgs { json: false })
        ));
        assert!(matches!(
            parse(&["drover", "status", "--json"]).command,
            Command::Status(StatusArgs { json: true })
        ));
    }

    #[test]
    fn text_output() {
        assert_eq!(
            status().render(NOW),
            "policy version  7\n\
             store id        st-1\n\
             data planes     2 (1 connected)\n\
             \n\
             ID    HTTP ADDR       SERVES       CONNECTED  LAST SEEN  UNAVAILABLE  LEASE MESSAGES            LAST ERROR\n\
             dp-a  127.0.0.1:8080  7 (current)  yes        3s ago     -            412 (30 asks, 3 refused)  -\n\
             dp-b  -               6 (behind)   no         2h ago     groq,local   -                         version 7 rejected: route \"x\": bad thing\n\
             \n\
             unavailable providers (requests to them get 503):\n  \
             dp-b  groq: environment variable GROQ_API_KEY is not set on this data plane\n  \
             dp-b  local: environment variable HOME is not allowed\n\
             \n\
             unusable route targets (never sent; change or remove the route):\n  \
             dp-a  legacy -> az/team/gpt-4o: \"team/gpt-4o\" cannot be used with provider kind azure\n"
        );
        let empty = StatusView::from(pb::StatusResponse {
            version: 1,
            store_id: "s".into(),
            dataplanes: vec![],
        });
        assert_eq!(
            empty.render(NOW),
            "policy version  1\nstore id        s\ndata planes     none\n"
        );
    }

    #[test]
    fn json_output() {
        let json: serde_json::Value = serde_json::from_str(&output::json(&status()).unwrap()).unwrap();
        assert_eq!(json["version"], 7);
        assert_eq!(json["store_id"], "st-1");
        assert_eq!(
            json["dataplanes"][0],
            serde_json::json!({
                "id": "dp-a",
                "http_addr": "127.0.0.1:8080",
                "peer": "127.0.0.1:50000",
                "served_version": 7,
                "connected": true,
                "last_error": "",
                "rejected_version": 0,
                "last_seen_unix_ms": NOW - 3_000,
                "unavailable_providers": [],
                "unusable_targets": [{
                    "route": "legacy",
                    "target": "az/team/gpt-4o",
                    "reason": "\"team/gpt-4o\" cannot be used with provider kind azure",
                }],
                "leases": {"streams": 1, "messages": 412, "asks": 30, "granted": 27, "refused": 3, "holdings": 120},
            })
        );
        assert_eq!(json["dataplanes"][1]["leases"], serde_json::Value::Null);
        assert_eq!(json["dataplanes"][1]["unusable_targets"], serde_json::json!([]));
        assert_eq!(
            json["dataplanes"][1]["unavailable_providers"],
            serde_json::json!([
                {"provider": "groq", "reason": "environment variable GROQ_API_KEY is not set on this data plane"},
                {"provider": "local", "reason": "environment variable HOME is not allowed"},
            ])
        );
    }

    #[test]
    fn last_seen() {
        assert_eq!(ago(0, NOW), "never");
        assert_eq!(ago(NOW, NOW), "just now");
        assert_eq!(ago(NOW + 5_000, NOW), "just now");
        assert_eq!(ago(NOW - 59_000, NOW), "59s ago");
        assert_eq!(ago(NOW - 60_000, NOW), "1m ago");
        assert_eq!(ago(NOW - 3 * 86_400_000, NOW), "3d ago");
    }
}
