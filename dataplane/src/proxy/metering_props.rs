//! Metering cannot depend on how a provider lays out its stream: every stream of the
//! conformance corpus (`tests/corpus/`), re-encoded in many valid ways and cut at random
//! points, gives the same usage, the same text relayed, the same completion, and the same
//! events to the caller (the same strip decisions) as the stream as recorded.
//!
//! Re-encodings of each JSON event: compact with sorted keys, spaced as Python writes it,
//! pretty-printed across several `data:` lines, keys in reverse order, and every string
//! character escaped (`\u0022`, `\/`); of each event: `\n`, `\r\n` or `\r` line ends, `data:`
//! with or without its space, comment lines. Recorded raw events (cut ones, odd line ends)
//! are sent as they are.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::formats::ApiFormat;
use crate::formats::Family;
use crate::formats::ir::Usage;
use crate::formats::sse::{SseFramer, parse_events};
use crate::formats::tap::StreamKind;
use crate::proxy::relay::{Passthrough, Transform, Translate};

/// Encodings of each stream tried, each with its own random cuts.
const ROUNDS: u64 = 24;

#[derive(Clone, Copy, Debug)]
enum Style {
    Compact,
    Spaced,
    Pretty,
    Reversed,
    Escaped,
}

const STYLES: [Style; 5] = [
    Style::Compact,
    Style::Spaced,
    Style::Pretty,
    Style::Reversed,
    Style::Escaped,
];

fn write_string(s: &str, style: Style, out: &mut String) {
    if !matches!(style, Style::Escaped) {
        out.push_str(&serde_json::to_string(s).unwrap());
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii_alphanumeric() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            }
        }
    }
    out.push('"');
}

fn write_json(v: &Value, style: Style, depth: usize, out: &mut String) {
    let (colon, comma) = match style {
        Style::Spaced => (": ", ", "),
        Style::Pretty => (": ", ","),
        _ => (":", ","),
    };
    let newline = |out: &mut String, depth: usize| {
        if matches!(style, Style::Pretty) {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        }
    };
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut entries: Vec<_> = map.iter().collect();
            if matches!(style, Style::Reversed) {
                entries.reverse();
            }
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                write_string(k, style, out);
                out.push_str(colon);
                write_json(v, style, depth + 1, out);
            }
            if !entries.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                newline(out, depth + 1);
                write_json(v, style, depth + 1, out);
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, style, out),
        other => out.push_str(&other.to_string()),
    }
}

/// One recorded event (as the corpus holds it, without its blank line) written anew.
fn reencode(event: &str, rng: &mut StdRng) -> String {
    let style = STYLES[rng.random_range(0..STYLES.len())];
    let eol = ["\n", "\r\n", "\r"][rng.random_range(0..3)];
    let space = if rng.random_bool(0.5) { " " } else { "" };
    let mut out = String::new();
    if rng.random_bool(0.3) {
        out.push_str(": keep-alive");
        out.push_str(eol);
    }
    let mut data: Vec<&str> = Vec::new();
    for line in event.split('\n') {
        match line.split_once(':') {
            Some(("data", value)) => data.push(value.strip_prefix(' ').unwrap_or(value)),
            Some((field, value)) => {
                let value = value.strip_prefix(' ').unwrap_or(value);
                write!(out, "{field}:{space}{value}{eol}").unwrap();
            }
            None => write!(out, "{line}{eol}").unwrap(),
        }
    }
    let data = data.join("\n");
    let text = match serde_json::from_str::<Value>(&data) {
        Ok(v) if !data.is_empty() => {
            let mut s = String::new();
            write_json(&v, style, 0, &mut s);
            s
        }
        _ => data,
    };
    if !text.is_empty() || event.contains("data:") {
        for line in text.split('\n') {
            write!(out, "data:{space}{line}{eol}").unwrap();
        }
    }
    out.push_str(eol);
    out
}

/// What the relay made of one stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    usage: Option<Usage>,
    chars: usize,
    completed: bool,
    /// The caller's events, each as its name and its data (JSON where it is JSON).
    events: Vec<(Option<String>, Value)>,
}

fn without_created(mut v: Value) -> Value {
    if let Some(map) = v.as_object_mut() {
        map.remove("created");
        for (_, inner) in map.iter_mut() {
            *inner = without_created(inner.take());
        }
    }
    v
}

fn run<T: Transform>(mut transform: T, pieces: &[Bytes]) -> Outcome {
    let mut framer = SseFramer::default();
    let mut out = Vec::new();
    for piece in pieces {
        if let Some(events) = framer.push(piece.clone()).unwrap() {
            transform.push(events, &mut out);
        }
    }
    let completed = transform.end(&mut out);
    if !completed {
        transform.fail("cut", "stream_incomplete", &mut out);
    }
    let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
    let events = parse_events(&bytes)
        .into_iter()
        .map(|e| {
            let data = serde_json::from_str(&e.data).map_or(Value::String(e.data), without_created);
            (e.event, data)
        })
        .collect();
    Outcome {
        usage: transform.usage(),
        chars: transform.content_chars(),
        completed,
        events,
    }
}

struct Stream {
    name: String,
    /// (sent as it is, text)
    events: Vec<(bool, String)>,
    ingress: ApiFormat,
    provider: Family,
    include_usage: bool,
    /// OpenAI Responses events rather than chat chunks.
    responses: bool,
}

impl Stream {
    fn outcome(&self, pieces: &[Bytes]) -> Outcome {
        let same = matches!(
            (self.ingress, self.provider),
            (ApiFormat::OpenAi, Family::OpenAi) | (ApiFormat::Anthropic, Family::Anthropic)
        );
        match (same, self.ingress) {
            _ if self.responses => run(Passthrough::new(StreamKind::Responses, false), pieces),
            (true, ApiFormat::OpenAi) => run(
                Passthrough::new(StreamKind::OpenAiChunks, !self.include_usage),
                pieces,
            ),
            (true, ApiFormat::Anthropic) => run(Passthrough::new(StreamKind::Anthropic, false), pieces),
            (false, _) => run(
                Translate::new(self.provider, self.ingress, self.include_usage, false),
                pieces,
            ),
        }
    }
}

fn corpus_streams() -> Vec<Stream> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_dir())
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let case: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let Some(events) = case["upstream"]["body"].as_array() else {
            continue;
        };
        let events = events
            .iter()
            .map(|e| match e {
                Value::String(s) => (false, s.clone()),
                other => (true, other["raw"].as_str().unwrap().to_owned()),
            })
            .collect();
        out.push(Stream {
            name: case["name"].as_str().unwrap().to_owned(),
            events,
            ingress: match case["ingress"].as_str().unwrap() {
                "anthropic" => ApiFormat::Anthropic,
                _ => ApiFormat::OpenAi,
            },
            provider: match case["provider"].as_str().unwrap() {
                "anthropic" => Family::Anthropic,
                "gemini" => Family::Gemini,
                _ => Family::OpenAi,
            },
            include_usage: case["request"]["body"]["stream_options"]["include_usage"] == true,
            responses: false,
        });
    }
    out.push(Stream {
        name: "responses".into(),
        events: RESPONSES.iter().map(|e| (false, (*e).to_owned())).collect(),
        ingress: ApiFormat::OpenAi,
        provider: Family::OpenAi,
        include_usage: false,
        responses: true,
    });
    out
}

/// A Responses stream as OpenAI sends it (the corpus holds chat streams only).
const RESPONSES: &[&str] = &[
    r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response","status":"in_progress","output":[],"usage":null}}"#,
    r#"event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
    r#"event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi \"there\"/é"}"#,
    r#"event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"text":"Hi \"there\"/é"}"#,
    r#"event: response.completed
data: {"type":"response.completed","sequence_number":4,"response":{"id":"resp_1","object":"response","status":"completed","usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":2},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":16}}}"#,
];

/// The bytes cut at up to 12 random points.
fn cut(bytes: &[u8], rng: &mut StdRng) -> Vec<Bytes> {
    let mut points: Vec<usize> = (0..rng.random_range(0..12))
        .map(|_| rng.random_range(0..=bytes.len()))
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        pieces.push(Bytes::copy_from_slice(&bytes[start..p]));
        start = p;
    }
    pieces
}

#[test]
fn metering_is_the_same_however_the_stream_is_encoded_or_cut() {
    let streams = corpus_streams();
    assert!(
        streams.len() >= 25,
        "only {} streams in the corpus",
        streams.len()
    );
    let mut saw_usage = 0;
    for (n, stream) in streams.iter().enumerate() {
        let recorded: String = stream
            .events
            .iter()
            .map(|(raw, e)| if *raw { e.clone() } else { format!("{e}\n\n") })
            .collect();
        let want = stream.outcome(&[Bytes::from(recorded)]);
        saw_usage += usize::from(want.usage.is_some());
        for round in 0..ROUNDS {
            let mut rng = StdRng::seed_from_u64(n as u64 * 1_000 + round);
            let encoded: String = stream
                .events
                .iter()
                .map(|(raw, e)| if *raw { e.clone() } else { reencode(e, &mut rng) })
                .collect();
            let got = stream.outcome(&cut(encoded.as_bytes(), &mut rng));
            assert_eq!(
                got, want,
                "{} round {round}: the stream encoded as\n{encoded}",
                stream.name
            );
        }
    }
    assert!(saw_usage >= 15, "only {saw_usage} streams carry usage");
}

#[test]
fn reencoding_keeps_the_value() {
    let mut rng = StdRng::seed_from_u64(7);
    let event = "event: x\ndata: {\"a\": [1, \"b/\\\"c\u{e9}\u{1f600}\"], \"d\": {}, \"e\": []}";
    for _ in 0..50 {
        let text = reencode(event, &mut rng);
        let parsed = parse_events(text.as_bytes());
        assert_eq!(parsed.len(), 1, "{text:?}");
        assert_eq!(parsed[0].event.as_deref(), Some("x"));
        let v: Value = serde_json::from_str(&parsed[0].data).unwrap();
        assert_eq!(v["a"][1], "b/\"c\u{e9}\u{1f600}", "{text:?}");
    }
}
