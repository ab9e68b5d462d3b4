//! The rate-limit headers each SDK family reads: OpenAI's `x-ratelimit-*` (reset as a
//! duration, `1s`, `6m0s`) and Anthropic's `anthropic-ratelimit-*` (reset as an RFC 3339 time).

use drover_proto::model::UtcDay;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::ApiFormat;

/// One limit as a caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub limit: i64,
    pub remaining: i64,
    /// When the window ends, Unix ms.
    pub reset_ms: i64,
}

/// The limits to show: requests and tokens, each the tightest of the key's and its tenant's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Headroom>,
    pub tokens: Option<Headroom>,
}

impl RateHeaders {
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    /// Keeps the tighter of two headrooms (the lower remaining).
    pub fn tighten(slot: &mut Option<Headroom>, other: Headroom) {
        if slot.is_none_or(|h| other.remaining < h.remaining) {
            *slot = Some(other);
        }
    }

    /// Writes the headers of `format` into `headers`.
    pub fn write(&self, format: ApiFormat, now_ms: i64, headers: &mut HeaderMap) {
        for (names, h) in [(&REQUESTS, self.requests), (&TOKENS, self.tokens)] {
            let Some(h) = h else { continue };
            let (names, reset) = match format {
                ApiFormat::OpenAi => (&names.openai, go_duration(h.reset_ms - now_ms)),
                ApiFormat::Anthropic => (&names.anthropic, rfc3339(h.reset_ms)),
            };
            headers.insert(names[0].clone(), HeaderValue::from(h.limit));
            headers.insert(names[1].clone(), HeaderValue::from(h.remaining.max(0)));
            if let Ok(v) = HeaderValue::try_from(reset) {
                headers.insert(names[2].clone(), v);
            }
        }
    }
}

/// Every rate-limit header name, of both families (for CORS: browser callers may read them).
pub fn header_names() -> impl Iterator<Item = HeaderName> {
    [REQUESTS, TOKENS]
        .into_iter()
        .flat_map(|n| n.openai.into_iter().chain(n.anthropic))
}

/// The limit, remaining and reset headers of one kind, in each family's names.
struct Names {
    openai: [HeaderName; 3],
    anthropic: [HeaderName; 3],
}

const REQUESTS: Names = Names {
    openai: [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    anthropic: [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
};

const TOKENS: Names = Names {
    openai: [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
    anthropic: [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
};

/// A duration as OpenAI writes it: `20ms` below a second, else `1s`, `6m0s`, `1h2m3s`.
pub fn go_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let secs = (ms + 999) / 1_000;
    let (h, m, s) = (secs / 3_600, secs % 3_600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// A Unix time in ms as RFC 3339, UTC, to the second (rounded up).
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = (unix_ms + 999).div_euclid(1_000);
    let day = UtcDay::of_unix_ms(secs * 1_000);
    let (y, mo, d) = day.ymd();
    let in_day = secs - day.start_unix_ms() / 1_000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        in_day / 3_600,
        in_day % 3_600 / 60,
        in_day % 60
    )
}

/// Seconds to wait until `until_ms`, at least 1 (for `retry-after`).
pub fn retry_after_secs(until_ms: i64, now_ms: i64) -> u64 {
    u64::try_from((until_ms - now_ms + 999) / 1_000)
        .unwrap_or(0)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_are_written_as_each_sdk_expects() {
        assert_eq!(go_duration(20), "20ms");
        assert_eq!(go_duration(-5), "0ms");
        assert_eq!(go_duration(1_000), "1s");
        assert_eq!(go_duration(59_001), "1m0s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
        let at = UtcDay::from_ymd(2026, 12, 6).unwrap().start_unix_ms() + 3_723_500;
        assert_eq!(rfc3339(at), "2026-12-06T01:02:04Z");
        assert_eq!(retry_after_secs(10_500, 10_000), 1);
        assert_eq!(retry_after_secs(12_001, 10_000), 3);
    }

    #[test]
    fn each_format_gets_its_own_headers() {
        let h = RateHeaders {
            requests: Some(Headroom {
                limit: 60,
                remaining: 7,
                reset_ms: 30_000,
            }),
            tokens: None,
        };
        let mut openai = HeaderMap::new();
        h.write(ApiFormat::OpenAi, 0, &mut openai);
        assert_eq!(openai["x-ratelimit-limit-requests"], "60");
        assert_eq!(openai["x-ratelimit-remaining-requests"], "7");
        assert_eq!(openai["x-ratelimit-reset-requests"], "30s");
        assert!(!openai.contains_key("x-ratelimit-limit-tokens"));
        let mut anthropic = HeaderMap::new();
        h.write(ApiFormat::Anthropic, 0, &mut anthropic);
        assert_eq!(anthropic["anthropic-ratelimit-requests-limit"], "60");
        assert_eq!(anthropic["anthropic-ratelimit-requests-remaining"], "7");
        assert_eq!(
            anthropic["anthropic-ratelimit-requests-reset"],
            "1970-01-01T00:00:30Z"
        );
        let mut tight = h.requests;
        RateHeaders::tighten(
            &mut tight,
            Headroom {
                limit: 10,
                remaining: 2,
                reset_ms: 1,
            },
        );
        assert_eq!(tight.unwrap().limit, 10);
    }
}
