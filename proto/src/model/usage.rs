//! Usage records as data planes report them, their cost, and the UTC days they are grouped by.

use std::fmt;

use super::InvalidPolicy;
use crate::pb;

/// One metered request, as a data plane reports it and the control plane stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageRecord {
    /// Unique per request; the idempotency key of the ledger.
    pub request_id: String,
    pub time_unix_ms: i64,
    pub tenant: String,
    pub key_id: String,
    pub alias: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
    /// nano-USD.
    pub cost_nano_usd: i64,
    pub latency_ms: u32,
    pub ttft_ms: u32,
    pub status: u16,
    pub cache_hit: bool,
    pub saved_nano_usd: i64,
    pub policy_version: u64,
    pub unpriced: bool,
    pub stream: bool,
    pub endpoint: String,
    pub failed: bool,
}

pub use crate::limits::{MAX_REQUEST_ID_LEN, MAX_USAGE_NANO_USD, MAX_USAGE_TIME_UNIX_MS, MAX_USAGE_TOKENS};

impl UsageRecord {
    /// Whether the ledger accepts this record: an id of 1-128 bytes, costs and token counts
    /// within their bounds, a time between 1970 and the year 10000, an HTTP status.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.request_id.is_empty() || self.request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(InvalidPolicy::new(
                "request_id",
                format!("must be 1-{MAX_REQUEST_ID_LEN} bytes"),
            ));
        }
        let within = || format!("usage {:?}", self.request_id);
        if self.cost_nano_usd < 0 || self.saved_nano_usd < 0 {
            return Err(InvalidPolicy::new(within(), "cost must not be negative"));
        }
        if self.cost_nano_usd > MAX_USAGE_NANO_USD || self.saved_nano_usd > MAX_USAGE_NANO_USD {
            return Err(InvalidPolicy::new(
                within(),
                format!("cost must be at most {MAX_USAGE_NANO_USD} nano-USD"),
            ));
        }
        let tokens = [
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.cache_creation_tokens,
            self.reasoning_tokens,
        ];
        if tokens.iter().any(|&t| t > MAX_USAGE_TOKENS) {
            return Err(InvalidPolicy::new(
                within(),
                format!("token counts must be at most {MAX_USAGE_TOKENS}"),
            ));
        }
        if !(0..MAX_USAGE_TIME_UNIX_MS).contains(&self.time_unix_ms) {
            return Err(InvalidPolicy::new(
                within(),
                format!(
                    "time {} ms is not between 1970 and the year 10000",
                    self.time_unix_ms
                ),
            ));
        }
        if i64::try_from(self.policy_version).is_err() {
            return Err(InvalidPolicy::new(within(), "policy version out of range"));
        }
        if !(100..=599).contains(&self.status) {
            return Err(InvalidPolicy::new(within(), "status is not an HTTP status"));
        }
        Ok(())
    }
}

impl TryFrom<pb::UsageRecord> for UsageRecord {
    type Error = InvalidPolicy;

    /// Takes the record's strings over (no copies) and validates it.
    fn try_from(r: pb::UsageRecord) -> Result<Self, InvalidPolicy> {
        let record = UsageRecord {
            // Out of range: refused by `validate` as any other non-HTTP status.
            status: u16::try_from(r.status).unwrap_or(0),
            request_id: r.request_id,
            time_unix_ms: r.time_unix_ms,
            tenant: r.tenant,
            key_id: r.key_id,
            alias: r.alias,
            provider: r.provider,
            model: r.model,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cache_creation_tokens: r.cache_creation_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_nano_usd: r.cost_nano_usd,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            cache_hit: r.cache_hit,
            saved_nano_usd: r.saved_nano_usd,
            policy_version: r.policy_version,
            unpriced: r.unpriced,
            stream: r.stream,
            endpoint: r.endpoint,
            failed: r.failed,
        };
        record.validate()?;
        Ok(record)
    }
}

impl From<UsageRecord> for pb::UsageRecord {
    fn from(r: UsageRecord) -> Self {
        pb::UsageRecord {
            request_id: r.request_id,
            time_unix_ms: r.time_unix_ms,
            tenant: r.tenant,
            key_id: r.key_id,
            alias: r.alias,
            provider: r.provider,
            model: r.model,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cost_nano_usd: r.cost_nano_usd,
            latency_ms: r.latency_ms,
            ttft_ms: r.ttft_ms,
            status: u32::from(r.status),
            cache_hit: r.cache_hit,
            saved_nano_usd: r.saved_nano_usd,
            policy_version: r.policy_version,
            unpriced: r.unpriced,
            stream: r.stream,
            endpoint: r.endpoint,
            failed: r.failed,
            cache_creation_tokens: r.cache_creation_tokens,
            reasoning_tokens: r.reasoning_tokens,
        }
    }
}

/// Cost in nano-USD of `tokens` at `usd_per_mtok` (USD per million tokens): 1 USD per
/// million tokens is 1,000 nano-USD per token.
pub fn cost_nano_usd(tokens: u64, usd_per_mtok: f64) -> i64 {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let nano = (tokens as f64 * usd_per_mtok * 1000.0).round() as i64;
    nano.max(0)
}

/// Milliseconds in a day.
pub const MS_PER_DAY: i64 = 86_400_000;

/// The current Unix time in milliseconds, as records, keys and listings carry it.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A calendar day in UTC (proleptic Gregorian), as days since 1970-01-01. Displays and parses
/// as `YYYY-MM-DD`; usage is rolled up and grouped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcDay(pub i64);

impl UtcDay {
    /// The day a Unix time in milliseconds falls on.
    pub fn of_unix_ms(ms: i64) -> Self {
        UtcDay(ms.div_euclid(MS_PER_DAY))
    }

    /// Midnight at the start of the day, Unix milliseconds (saturating).
    pub fn start_unix_ms(self) -> i64 {
        self.0.saturating_mul(MS_PER_DAY)
    }

    /// The day of a calendar date, or `None` if the date does not exist (e.g. February 30).
    pub fn from_ymd(year: i64, month: u32, day: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some(UtcDay(era * 146_097 + doe - 719_468))
    }

    /// Year, month (1-12) and day of the month (1-31).
    pub fn ymd(self) -> (i64, u32, u32) {
        // Howard Hinnant's civil_from_days.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (year, month as u32, day as u32)
    }

    /// Parses `YYYY-MM-DD` (four-digit year).
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let digits = |range: std::ops::Range<usize>| -> Option<u32> {
            let part = text.get(range)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        UtcDay::from_ymd(i64::from(digits(0..4)?), digits(5..7)?, digits(8..10)?)
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

impl fmt::Display for UtcDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: "req-1".into(),
            time_unix_ms: 1_764_000_000_000,
            status: 200,
            input_tokens: 10,
            output_tokens: 5,
            cost_nano_usd: 1234,
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_record_round_trips() {
        let r = UsageRecord::try_from(record()).unwrap();
        assert_eq!(pb::UsageRecord::from(r), record());
    }

    #[test]
    fn records_out_of_bounds_are_refused() {
        type Change = Box<dyn Fn(&mut pb::UsageRecord)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.request_id.clear()), "request_id"),
            (
                Box::new(|r| r.request_id = "x".repeat(MAX_REQUEST_ID_LEN + 1)),
                "request_id",
            ),
            (Box::new(|r| r.cost_nano_usd = -1), "negative"),
            (Box::new(|r| r.saved_nano_usd = -1), "negative"),
            (Box::new(|r| r.cost_nano_usd = MAX_USAGE_NANO_USD + 1), "at most"),
            (
                Box::new(|r| r.input_tokens = MAX_USAGE_TOKENS + 1),
                "token counts",
            ),
            (Box::new(|r| r.reasoning_tokens = u64::MAX), "token counts"),
            (Box::new(|r| r.time_unix_ms = -1), "between 1970"),
            (
                Box::new(|r| r.time_unix_ms = MAX_USAGE_TIME_UNIX_MS),
                "between 1970",
            ),
            (Box::new(|r| r.policy_version = u64::MAX), "policy version"),
            (Box::new(|r| r.status = 0), "HTTP status"),
            (Box::new(|r| r.status = 70_000), "HTTP status"),
        ];
        for (change, want) in cases {
            let mut r = record();
            change(&mut r);
            let err = UsageRecord::try_from(r).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let mut edge = record();
        edge.time_unix_ms = MAX_USAGE_TIME_UNIX_MS - 1;
        edge.input_tokens = MAX_USAGE_TOKENS;
        edge.cost_nano_usd = MAX_USAGE_NANO_USD;
        assert!(UsageRecord::try_from(edge).is_ok());
    }

    #[test]
    fn utc_days_convert_both_ways() {
        let cases = [
            (0, "1970-01-01"),
            (MS_PER_DAY - 1, "1970-01-01"),
            (MS_PER_DAY, "1970-01-02"),
            (951_782_400_000, "2000-02-29"),
            (1_764_028_800_000, "2025-11-25"),
            (MAX_USAGE_TIME_UNIX_MS - 1, "9999-12-31"),
            (-1, "1969-12-31"),
        ];
        for (ms, text) in cases {
            let day = UtcDay::of_unix_ms(ms);
            assert_eq!(day.to_string(), text, "{ms}");
            assert_eq!(UtcDay::parse(text), Some(day), "{text}");
        }
        assert_eq!(
            UtcDay::of_unix_ms(MAX_USAGE_TIME_UNIX_MS).to_string(),
            "10000-01-01"
        );
        // Every day of four centuries round-trips and follows the one before.
        let mut previous = UtcDay::parse("1999-12-31").unwrap();
        for _ in 0..146_097 {
            let day = UtcDay(previous.0 + 1);
            let (y, m, d) = day.ymd();
            assert_eq!(UtcDay::from_ymd(y, m, d), Some(day));
            assert!(day.to_string() > previous.to_string() || y >= 10_000);
            previous = day;
        }
        for bad in [
            "2025-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-1-01",
            "20251-01-0",
            "2025/01/01",
            "+025-01-01",
            "2025-01-32",
        ] {
            assert_eq!(UtcDay::parse(bad), None, "{bad}");
        }
        assert!(UtcDay::parse("2024-02-29").is_some());
    }
}
