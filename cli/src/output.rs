//! How results reach the terminal: aligned tables for people, JSON for scripts, one short line
//! per change. Nothing here knows about a particular command.

use std::io::{self, Write};

use serde::Serialize;

/// A table with a header row; columns are padded to their widest cell, two spaces apart.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Missing cells are left blank, extra cells are dropped.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| printable(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Replaces control characters (newlines, terminal escapes) that text from the server may
/// hold, so that one value stays on one line and cannot drive the terminal.
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// [`printable`] for text of several lines: newlines stay.
pub fn printable_lines(s: &str) -> String {
    s.split('\n').map(printable).collect::<Vec<_>>().join("\n")
}

/// Pretty JSON with a final newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}

/// Writes to stdout. A closed pipe (`drover provider list | head -1`) is not an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints the table, or `empty` when it has no rows.
pub fn print_table(table: &Table, empty: &str) -> anyhow::Result<()> {
    if table.is_empty() {
        print(&format!("{empty}\n"))
    } else {
        print(&table.render())
    }
}

/// Prints the line that confirms a change: `provider openai added (policy version 7)`.
pub fn print_change(what: &str, version: u64) -> anyhow::Result<()> {
    print(&format!("{} (policy version {version})\n", printable(what)))
}

/// Formats Unix milliseconds as RFC 3339 in UTC to the second: `2026-12-06T09:30:00Z`.
pub fn utc_time(unix_ms: i64) -> String {
    let day = drover_proto::model::UtcDay::of_unix_ms(unix_ms);
    let (y, m, d) = day.ymd();
    let secs = (unix_ms - day.start_unix_ms()) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// [`utc_time`], or `None` for 0 (never / not set): for JSON fields that are null when unset.
pub fn utc_time_opt(unix_ms: i64) -> Option<String> {
    (unix_ms != 0).then(|| utc_time(unix_ms))
}

/// Formats a price (USD per million tokens) without float noise: `2.5`, `0.075`, `10`.
pub fn usd(value: f64) -> String {
    format!("{value}")
}

/// Formats an amount of nano-USD (1e-9 USD) as USD, exactly, from the integer: at least six
/// decimals, up to nine when they are not zero: `1.500000`, `0.000000007`, `-0.250000`.
pub fn nano_usd(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let abs = nano.unsigned_abs();
    let mut fraction = format!("{:09}", abs % 1_000_000_000);
    while fraction.len() > 6 && fraction.ends_with('0') {
        fraction.pop();
    }
    format!("{sign}{}.{fraction}", abs / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(["NAME", "KIND", "BASE URL"]);
        t.row([
            "openai".into(),
            "openai".into(),
            "https://api.openai.com/v1".into(),
        ]);
        t.row([
            "a".into(),
            "openai-compatible".into(),
            "http://localhost:11434/v1".into(),
        ]);
        assert_eq!(
            t.render(),
            "NAME    KIND               BASE URL\n\
             openai  openai             https://api.openai.com/v1\n\
             a       openai-compatible  http://localhost:11434/v1\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_lines_have_no_trailing_spaces() {
        let mut t = Table::new(["A", "LONG HEADER", "C"]);
        t.row(["x".into()]);
        t.row(["yyyy".into(), String::new(), "z".into()]);
        let text = t.render();
        assert_eq!(text, "A     LONG HEADER  C\nx\nyyyy               z\n");
        assert!(text.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut t = Table::new(["M", "N"]);
        t.row(["héllo".into(), "1".into()]);
        t.row(["ab".into(), "2".into()]);
        assert_eq!(t.render(), "M      N\nhéllo  1\nab     2\n");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut t = Table::new(["ERROR"]);
        t.row(["bad\nsnapshot\u{1b}[31m".into()]);
        let text = t.render();
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn prices_print_without_noise() {
        assert_eq!(usd(2.5), "2.5");
        assert_eq!(usd(10.0), "10");
        assert_eq!(usd(0.075), "0.075");
        assert_eq!(usd(0.0), "0");
    }

    #[test]
    fn nano_usd_is_exact() {
        let cases = [
            (0, "0.000000"),
            (1, "0.000000001"),
            (1_000, "0.000001"),
            (1_500_000_000, "1.500000"),
            (27_750, "0.00002775"),
            (123_456_789_012, "123.456789012"),
            (-250_000_000, "-0.250000"),
            (i64::MAX, "9223372036.854775807"),
            (i64::MIN, "-9223372036.854775808"),
        ];
        for (nano, text) in cases {
            assert_eq!(nano_usd(nano), text, "{nano}");
        }
    }

    #[test]
    fn json_ends_with_a_newline() {
        let text = json(&serde_json::json!([{"a": 1}])).unwrap();
        assert!(text.ends_with("]\n"));
    }
}
