//! `drover audit`: the control plane's hash-chained audit log. Tail it (and follow it), export
//! it as JSON lines, verify the chain (optionally against an anchor kept elsewhere), and print
//! the current anchor.

use std::io::{self, Write as _};

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use drover_proto::pb;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::usage::parse_time;
use crate::client::{self, Client, GlobalArgs};
use crate::output;

/// Most records `tail -n` shows (the control plane's largest page).
const MAX_TAIL: u32 = 1_000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show the newest records, oldest first; with --follow, then each new one as it is recorded.
    Tail(TailArgs),
    /// Print every record (since --since) as JSON lines, with their hashes.
    Export(ExportArgs),
    /// Check the hash chain and print its head as an anchor; exits non-zero when the log is
    /// not intact.
    ///
    /// Names the first record that was altered, deleted or inserted. Keep the anchor outside the
    /// database: `--anchor` later also proves that nothing up to it was cut from the end.
    Verify {
        /// An anchor printed by an earlier `verify` or `anchor`, `SEQ:HASH`: also check that the
        /// chain still reaches it (nothing was cut from the end).
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_anchor)]
        anchor: Option<Anchor>,
        /// Print an object {ok, records, checkpoint, head, first_bad_seq, problem} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the head of the verified chain as `SEQ:HASH`, to keep outside the database.
    Anchor {
        /// Print an object {anchor, seq, hash} instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// How many of the newest matching records to show first (at most 1000).
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_TAIL)))]
    pub lines: u32,
    /// Keep printing new records as they are recorded, until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the records of this actor (an admin identity, `root`, or `drover`).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Only records at or after this time: YYYY-MM-DD (midnight UTC) or RFC 3339.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Print one JSON object per record and line (JSON lines) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only records at or after this time: YYYY-MM-DD (midnight UTC) or RFC 3339; default:
    /// every record.
    #[arg(long, value_name = "DATE", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
}

/// `export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per record and line.
    Jsonl,
}

/// A point on the chain: a record's position and its hash (64 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl Anchor {
    fn from_wire(a: Option<pb::AuditAnchor>) -> Anchor {
        let a = a.unwrap_or_default();
        Anchor {
            seq: a.seq,
            hash: a.hash,
        }
    }

    fn to_wire(&self) -> pb::AuditAnchor {
        pb::AuditAnchor {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }

    /// `SEQ:HASH`, as `--anchor` takes it back.
    fn text(&self) -> String {
        format!("{}:{}", self.seq, self.hash)
    }
}

fn parse_anchor(raw: &str) -> Result<Anchor, String> {
    let bad = || format!("{raw:?} is not an anchor: expected SEQ:HASH, a record number and 64 hex digits");
    let (seq, hash) = raw.trim().split_once(':').ok_or_else(bad)?;
    let seq = seq.parse::<u64>().map_err(|_| bad())?;
    if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(Anchor {
        seq,
        hash: hash.to_ascii_lowercase(),
    })
}

/// The request of a record in JSON output: the JSON the control plane stored, embedded as it
/// is (byte for byte, so that an exported record can be hashed again), or a string when it is
/// not JSON.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RequestJson {
    Json(Box<RawValue>),
    Text(String),
}

impl RequestJson {
    fn new(request: String) -> Self {
        // Only text that embeds unchanged: RawValue trims surrounding whitespace, and a line
        // break between tokens would split a JSON line.
        if request.trim() != request || request.contains(['\n', '\r']) {
            return RequestJson::Text(request);
        }
        match RawValue::from_string(request.clone()) {
            Ok(raw) => RequestJson::Json(raw),
            Err(_) => RequestJson::Text(request),
        }
    }
}

/// One record in `tail --json` and `export`: every field of the wire record, and its time as
/// RFC 3339 too.
#[derive(Debug, Serialize)]
pub struct RecordRow {
    pub seq: u64,
    pub time: String,
    pub time_unix_ms: i64,
    pub actor: String,
    pub role: String,
    pub actor_tenant: String,
    pub source: String,
    pub rpc: String,
    pub target: String,
    pub request: RequestJson,
    pub outcome: String,
    pub message: String,
    pub version: u64,
    pub unrecorded: u64,
    pub prev_hash: String,
    pub hash: String,
}

impl From<pb::AuditRecord> for RecordRow {
    fn from(r: pb::AuditRecord) -> Self {
        RecordRow {
            seq: r.seq,
            time: utc_time_ms(r.time_unix_ms),
            time_unix_ms: r.time_unix_ms,
            actor: r.actor,
            role: r.role,
            actor_tenant: r.actor_tenant,
            source: r.source,
            rpc: r.rpc,
            target: r.target,
            request: RequestJson::new(r.request),
            outcome: r.outcome,
            message: r.message,
            version: r.version,
            unrecorded: r.unrecorded,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// RFC 3339 in UTC to the millisecond: `2026-12-06T09:30:00.250Z`.
fn utc_time_ms(unix_ms: i64) -> String {
    let secs = output::utc_time(unix_ms);
    let whole = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{whole}.{:03}Z", unix_ms.rem_euclid(1000))
}

/// A record as one JSON line.
fn json_line(record: pb::AuditRecord) -> anyhow::Result<String> {
    let mut line = serde_json::to_string(&RecordRow::from(record))?;
    line.push('\n');
    Ok(line)
}

/// A record as one line for people:
/// `#12  2026-12-06T09:30:00Z  root(admin)  127.0.0.1:5000  CreateTenant  tenant/acme  ok`.
fn text_line(r: &pb::AuditRecord) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            output::printable(s)
        }
    };
    let mut actor = if r.actor.is_empty() {
        "(no valid token)".to_owned()
    } else {
        output::printable(&r.actor)
    };
    match (r.role.is_empty(), r.actor_tenant.is_empty()) {
        (true, true) => {}
        (false, true) => actor.push_str(&format!("({})", output::printable(&r.role))),
        (role_unknown, false) => actor.push_str(&format!(
            "({}{}tenant {})",
            if role_unknown {
                String::new()
            } else {
                output::printable(&r.role)
            },
            if role_unknown { "" } else { ", " },
            output::printable(&r.actor_tenant)
        )),
    }
    let mut outcome = dash(&r.outcome);
    if !r.message.is_empty() {
        outcome.push_str(": ");
        outcome.push_str(&output::printable(&r.message));
    }
    if r.unrecorded > 0 {
        outcome.push_str(&format!(" ({} earlier refusal(s) not recorded)", r.unrecorded));
    }
    format!(
        "#{}  {}  {actor}  {}  {}  {}  {outcome}\n",
        r.seq,
        output::utc_time(r.time_unix_ms),
        dash(&r.source),
        dash(&r.rpc),
        dash(&r.target),
    )
}

/// Writes to stdout and flushes. `Ok(false)` when stdout is closed (`drover audit tail -f |
/// head -3`): the reader went away, which ends the command without an error.
fn emit(text: &str) -> anyhow::Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records as text or JSON lines, in order, each once: a record at or before `last` (the last
/// seq shown) is skipped, and `last` moves to the last one rendered.
fn render(
    records: impl IntoIterator<Item = pb::AuditRecord>,
    last: &mut u64,
    json: bool,
) -> anyhow::Result<String> {
    let mut text = String::new();
    for r in records {
        if r.seq <= *last {
            continue;
        }
        *last = r.seq;
        if json {
            text.push_str(&json_line(r)?);
        } else {
            text.push_str(&text_line(&r));
        }
    }
    Ok(text)
}

/// Prints records with [`render`]. `Ok(false)` when stdout is closed.
fn print_records(
    records: impl IntoIterator<Item = pb::AuditRecord>,
    last: &mut u64,
    json: bool,
) -> anyhow::Result<bool> {
    let text = render(records, last, json)?;
    if text.is_empty() {
        return Ok(true);
    }
    emit(&text)
}

pub async fn run(command: AuditCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(global).await?;
    match command {
        AuditCommand::Tail(args) if args.follow => follow(&client, args).await,
        AuditCommand::Tail(args) => {
            if args.lines == 0 {
                return Ok(());
            }
            let records = client
                .admin
                .list_audit(pb::ListAuditRequest {
                    after_seq: 0,
                    limit: args.lines,
                    actor: args.actor.unwrap_or_default(),
                    since_unix_ms: args.since.unwrap_or(0),
                    newest: true,
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner()
                .records;
            print_records(records, &mut 0, args.json).map(drop)
        }
        AuditCommand::Export(args) => {
            let Format::Jsonl = args.format;
            let mut after_seq = 0;
            let mut last = 0;
            loop {
                let page = client
                    .admin
                    .list_audit(pb::ListAuditRequest {
                        after_seq,
                        limit: client::PAGE_SIZE,
                        actor: String::new(),
                        since_unix_ms: args.since.unwrap_or(0),
                        newest: false,
                    })
                    .await
                    .map_err(|s| client.error(s))?
                    .into_inner();
                if !print_records(page.records, &mut last, true)? || page.next_after_seq == 0 {
                    return Ok(());
                }
                if page.next_after_seq <= after_seq {
                    bail!(
                        "the control plane paged the audit log backwards (after #{after_seq}, then #{})",
                        page.next_after_seq
                    );
                }
                after_seq = page.next_after_seq;
            }
        }
        AuditCommand::Verify { anchor, json } => {
            let v = verify(&mut client, anchor.as_ref()).await?;
            let report = Verification::from(v);
            if json {
                output::print(&output::json(&report)?)?;
            }
            if !report.ok {
                bail!(
                    "the audit log is not intact: {} (first_bad_seq {})",
                    output::printable(&report.problem),
                    report.first_bad_seq
                );
            }
            if !json {
                output::print(&verified_text(&report, anchor.as_ref()))?;
            }
            Ok(())
        }
        AuditCommand::Anchor { json } => {
            let report = Verification::from(verify(&mut client, None).await?);
            if !report.ok {
                bail!(
                    "no anchor: the audit log is not intact: {} (first_bad_seq {})",
                    output::printable(&report.problem),
                    report.first_bad_seq
                );
            }
            let head = report.head;
            if json {
                output::print(&output::json(&AnchorJson {
                    anchor: head.text(),
                    seq: head.seq,
                    hash: head.hash,
                })?)
            } else {
                output::print(&format!("{}\n", output::printable(&head.text())))
            }
        }
    }
}

/// `tail --follow`: the newest `lines` records, then each new one, through one `FollowAudit`
/// stream (the control plane sends the backlog up to the head it starts from, then every
/// record after it, so none is missed or repeated), until Ctrl-C, SIGTERM or a closed stdout.
async fn follow(client: &Client, args: TailArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::spawn(drover_proto::process::cancel_on_signal(stop.clone()));
    let request = pb::FollowAuditRequest {
        after_seq: 0,
        actor: args.actor.unwrap_or_default(),
        since_unix_ms: args.since.unwrap_or(0),
        backlog: args.lines,
    };
    let mut last = 0;
    let mut admin = client.admin.clone();
    let run = async {
        let mut stream = admin
            .follow_audit(request)
            .await
            .map_err(|s| client.error(s))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(record)) => {
                    if !print_records([record], &mut last, args.json)? {
                        return Ok(());
                    }
                }
                Ok(None) => bail!("the control plane ended the audit stream (is it stopping?)"),
                Err(s) => return Err(client.error(s)),
            }
        }
    };
    tokio::select! {
        ended = run => ended,
        () = stop.cancelled() => Ok(()),
    }
}

async fn verify(client: &mut Client, anchor: Option<&Anchor>) -> anyhow::Result<pb::VerifyAuditResponse> {
    client
        .admin
        .verify_audit(pb::VerifyAuditRequest {
            anchor: anchor.map(Anchor::to_wire),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| client.error(s))
}

/// `audit anchor --json`.
#[derive(Debug, Serialize)]
struct AnchorJson {
    /// `SEQ:HASH`, as `verify --anchor` takes it.
    anchor: String,
    seq: u64,
    hash: String,
}

/// `audit verify --json`.
#[derive(Debug, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub records: u64,
    pub checkpoint: Anchor,
    pub head: Anchor,
    /// 0 when ok.
    pub first_bad_seq: u64,
    /// Empty when ok.
    pub problem: String,
}

impl From<pb::VerifyAuditResponse> for Verification {
    fn from(v: pb::VerifyAuditResponse) -> Self {
        Verification {
            ok: v.ok,
            records: v.records,
            checkpoint: Anchor::from_wire(v.checkpoint),
            head: Anchor::from_wire(v.head),
            first_bad_seq: v.first_bad_seq,
            problem: v.problem,
        }
    }
}

/// What `audit verify` prints when the chain is intact.
fn verified_text(v: &Verification, anchor: Option<&Anchor>) -> String {
    let range = match (v.records, v.checkpoint.seq) {
        (0, 0) => "the log is empty".to_owned(),
        (0, c) => format!("none after the checkpoint #{c}"),
        (_, 0) => format!("#1 to #{}", v.head.seq),
        (_, c) => format!("#{} to #{}, after the checkpoint #{c}", c + 1, v.head.seq),
    };
    let mut text = format!("audit log intact: {} record(s) checked ({range})\n", v.records);
    if let Some(a) = anchor {
        text.push_str(&format!("the chain still reaches the anchor #{}\n", a.seq));
    }
    text.push_str(&format!(
        "anchor: {}\nKeep the anchor outside the database; `drover audit verify --anchor {}` later \
         proves nothing up to it was changed or cut.\n",
        v.head.text(),
        v.head.text()
    ));
    output::printable_lines(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn parses_tail_and_export() {
        match parse(&[
            "drover",
            "audit",
            "tail",
            "-n",
            "5",
            "--follow",
            "--actor",
            "root",
            "--since",
            "2026-01-02",
            "--json",
        ])
        .command
        {
            Command::Audit(AuditCommand::Tail(t)) => {
                assert_eq!(t.lines, 5);
                assert!(t.follow && t.json);
                assert_eq!(t.actor.as_deref(), Some("root"));
                assert_eq!(t.since, Some(1_767_312_000_000));
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse(&["drover", "audit", "tail"]).command {
            Command::Audit(AuditCommand::Tail(t)) => {
                assert_eq!(t.lines, 20);
                assert!(!t.follow && !t.json);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_err(&["drover", "audit", "tail", "-n", "1001"]).contains("1001"));
        assert!(parse_err(&["drover", "audit", "tail", "--since", "yesterday"]).contains("not a date"));
        match parse(&["drover", "audit", "export"]).command {
            Command::Audit(AuditCommand::Export(e)) => {
                assert_eq!((e.since, e.format), (None, Format::Jsonl));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(&[
                "drover",
                "audit",
                "export",
                "--since",
                "2026-01-02",
                "--format",
                "jsonl"
            ])
            .command,
            Command::Audit(AuditCommand::Export(ExportArgs {
                since: Some(1_767_312_000_000),
                format: Format::Jsonl
            }))
        ));
        assert!(parse_err(&["drover", "audit", "export", "--format", "csv"]).contains("csv"));
    }

    #[test]
    fn anchors_are_seq_colon_64_hex_digits() {
        let upper = format!("12:{}", HASH.to_uppercase());
        assert_eq!(
            parse_anchor(&upper),
            Ok(Anchor {
                seq: 12,
                hash: HASH.to_owned()
            })
        );
        for bad in [
            "",
            "12",
            HASH,
            "x:00",
            "-1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "12:00112233445566778899aabbccddeeff00112233445566778899aabbccddeef",
            "12:zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ] {
            assert!(parse_anchor(bad).is_err(), "{bad:?}");
        }
        let e = parse_err(&["drover", "audit", "verify", "--anchor", "12:abc"]);
        assert!(e.contains("SEQ:HASH"), "{e}");
        assert_eq!(
            parse_anchor(&format!("7:{HASH}")).unwrap().text(),
            format!("7:{HASH}")
        );
    }

    fn record() -> pb::AuditRecord {
        pb::AuditRecord {
            seq: 12,
            time_unix_ms: 1_764_979_200_250,
            actor: "root".into(),
            role: "admin".into(),
            actor_tenant: String::new(),
            source: "127.0.0.1:5000".into(),
            rpc: "CreateTenant".into(),
            target: "tenant/acme".into(),
            request: r#"{"name":"acme","labels":{"b":"1","a":"2"},"n":1.50}"#.into(),
            outcome: "ok".into(),
            message: String::new(),
            version: 7,
            unrecorded: 0,
            prev_hash: "0".repeat(64),
            hash: HASH.into(),
        }
    }

    #[test]
    fn records_print_as_one_line_each() {
        assert_eq!(
            text_line(&record()),
            "#12  2025-12-06T00:00:00Z  root(admin)  127.0.0.1:5000  CreateTenant  tenant/acme  ok\n"
        );
        let refused = pb::AuditRecord {
            actor: "auditor".into(),
            role: "viewer".into(),
            actor_tenant: "acme".into(),
            outcome: "permission_denied".into(),
            message: "auditor (viewer) may not call\nCreateTenant".into(),
            unrecorded: 3,
            ..record()
        };
        assert_eq!(
            text_line(&refused),
            "#12  2025-12-06T00:00:00Z  auditor(viewer, tenant acme)  127.0.0.1:5000  CreateTenant  \
             tenant/acme  permission_denied: auditor (viewer) may not call CreateTenant \
             (3 earlier refusal(s) not recorded)\n"
        );
        let anonymous = pb::AuditRecord {
            actor: String::new(),
            role: String::new(),
            target: String::new(),
            outcome: "unauthenticated".into(),
            ..record()
        };
        assert!(
            text_line(&anonymous)
                .contains("  (no valid token)  127.0.0.1:5000  CreateTenant  -  unauthenticated\n"),
            "{}",
            text_line(&anonymous)
        );
    }

    #[test]
    fn json_lines_keep_every_field_and_the_request_byte_for_byte() {
        let line = json_line(record()).unwrap();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line}");
        assert!(
            line.contains(r#""request":{"name":"acme","labels":{"b":"1","a":"2"},"n":1.50}"#),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in [
            "seq",
            "time",
            "time_unix_ms",
            "actor",
            "role",
            "actor_tenant",
            "source",
            "rpc",
            "target",
            "request",
            "outcome",
            "message",
            "version",
            "unrecorded",
            "prev_hash",
            "hash",
        ] {
            assert!(v.get(field).is_some(), "{field} in {line}");
        }
        assert_eq!(v["time"], "2025-12-06T00:00:00.250Z");
        assert_eq!(v["request"]["name"], "acme");
        for (request, expected) in [
            ("not json", serde_json::json!("not json")),
            ("", serde_json::json!("")),
            ("{\"a\":\n1}", serde_json::json!("{\"a\":\n1}")),
            (" {}", serde_json::json!(" {}")),
        ] {
            let line = json_line(pb::AuditRecord {
                request: request.into(),
                ..record()
            })
            .unwrap();
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["request"], expected);
        }
    }

    #[test]
    fn records_are_shown_once_and_in_order() {
        let at = |seq| pb::AuditRecord { seq, ..record() };
        let mut last = 12;
        let text = render([at(11), at(12), at(13), at(13), at(14)], &mut last, false).unwrap();
        let seqs: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(seqs, ["#13", "#14"]);
        assert_eq!(last, 14);
        assert_eq!(render([at(14)], &mut last, true).unwrap(), "");
        let json = render([at(15)], &mut last, true).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap()["seq"],
            15
        );
    }

    #[test]
    fn verify_reports() {
        let v = Verification::from(pb::VerifyAuditResponse {
            ok: true,
            records: 3,
            checkpoint: Some(pb::AuditAnchor {
                seq: 0,
                hash: "0".repeat(64),
            }),
            head: Some(pb::AuditAnchor {
                seq: 3,
                hash: HASH.into(),
            }),
            first_bad_seq: 0,
            problem: String::new(),
        });
        let text = verified_text(&v, None);
        assert!(
            text.starts_with("audit log intact: 3 record(s) checked (#1 to #3)\n"),
            "{text}"
        );
        assert!(text.contains(&format!("\nanchor: 3:{HASH}\n")), "{text}");
        let with = verified_text(
            &v,
            Some(&Anchor {
                seq: 2,
                hash: HASH.into(),
            }),
        );
        assert!(with.contains("reaches the anchor #2"), "{with}");
        let json: serde_json::Value = serde_json::from_str(&output::json(&v).unwrap()).unwrap();
        assert_eq!(json["head"]["seq"], 3);
        assert_eq!(json["checkpoint"]["hash"], "0".repeat(64));
        for field in ["ok", "records", "checkpoint", "head", "first_bad_seq", "problem"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        let pruned = Verification {
            checkpoint: Anchor {
                seq: 10,
                hash: HASH.into(),
            },
            head: Anchor {
                seq: 13,
                hash: HASH.into(),
            },
            ..v
        };
        assert!(
            verified_text(&pruned, None).contains("(#11 to #13, after the checkpoint #10)"),
            "{}",
            verified_text(&pruned, None)
        );
    }
}
