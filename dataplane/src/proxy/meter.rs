//! Metering: every request yields one usage record — stream or not, success or failure.
//!
//! A [`Meter`] starts when a request arrives and learns, phase by phase, the route, the
//! target, the provider's token counts and when the first byte went out. The `complete`
//! phase ([`super::complete::Completion`]) finishes it, however the request ended. A meter
//! dropped unfinished still records what was produced: the provider's counts when they
//! arrived, else an estimate from the characters relayed.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use drover_proto::model::{self, UsageRecord, cost_nano_usd};
use tokio::time::Instant;

use crate::formats::ir::Usage;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::usage::{OnAck, Usage as UsageSink};

/// Largest token count and cost a record carries (the ledger refuses more).
const MAX_TOKENS: u64 = drover_proto::limits::MAX_USAGE_TOKENS;
const MAX_COST_NANO_USD: i64 = drover_proto::limits::MAX_USAGE_NANO_USD;

/// Status recorded for a stream whose caller went away before it ended (as nginx logs it).
pub const CLIENT_CLOSED: u16 = 499;

pub struct Meter {
    sink: Arc<UsageSink>,
    metrics: Arc<Metrics>,
    record: UsageRecord,
    started: Instant,
    first_byte: Option<Instant>,
    usage: Option<Usage>,
    price: Option<model::Price>,
    /// Characters of content relayed, for the estimate when no usage came.
    output_chars: u64,
    /// Request body size, for the estimate when no usage came.
    request_bytes: u64,
    /// Run once the control plane's ledger has the record.
    ack: Option<OnAck>,
    done: bool,
}

impl Meter {
    /// A meter whose record goes to `sink` when it is finished.
    pub fn new(sink: Arc<UsageSink>, metrics: Arc<Metrics>, endpoint: &str, request_id: &str) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Meter {
            sink,
            metrics,
            record: UsageRecord {
                request_id: request_id.to_owned(),
                time_unix_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
                endpoint: endpoint.to_owned(),
                ..UsageRecord::default()
            },
            started: Instant::now(),
            first_byte: None,
            usage: None,
            price: None,
            output_chars: 0,
            request_bytes: 0,
            ack: None,
            done: false,
        }
    }

    /// What was asked for, and which policy decided it.
    pub fn route(&mut self, alias: &str, policy_version: u64, stream: bool, request_bytes: usize) {
        self.record.alias = alias.chars().take(256).collect();
        self.record.policy_version = policy_version;
        self.record.stream = stream;
        self.request_bytes = request_bytes as u64;
    }

    /// Who is calling: the tenant's name and the key's id.
    pub fn caller(&mut self, tenant: &str, key_id: &str) {
        self.record.tenant = tenant.to_owned();
        self.record.key_id = key_id.to_owned();
    }

    /// Who answered, and at what price.
    pub fn target(&mut self, policy: &Policy, provider: &str, model: &str) {
        self.record.provider = provider.to_owned();
        self.record.model = model.to_owned();
        self.price = policy.config.price(provider, model).cloned();
    }

    /// The provider's token counts (the latest report wins: stream counts are cumulative).
    pub fn usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// Answered from the response cache: cost 0, and `saved` (nano-USD) recorded.
    pub fn cache_hit(&mut self, saved: Option<i64>) {
        self.record.cache_hit = true;
        self.record.saved_nano_usd = saved.unwrap_or(0);
    }

    /// Content characters relayed to the caller.
    pub fn relayed_chars(&mut self, chars: usize) {
        self.output_chars += chars as u64;
    }

    /// The first byte of the answer is leaving.
    pub fn first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    /// The provider that answered and its model (empty before the `dispatch` phase).
    pub fn answered_by(&self) -> (&str, &str) {
        (&self.record.provider, &self.record.model)
    }

    /// The provider's token counts, if any came.
    pub fn provider_usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Cost of the usage so far, nano-USD; `None` when the model has no price. A cache hit costs 0.
    pub fn cost(&self) -> Option<i64> {
        if self.record.cache_hit {
            return Some(0);
        }
        self.provider_cost()
    }

    /// What the provider charges (or charged) for this usage.
    pub fn provider_cost(&self) -> Option<i64> {
        let price = self.price.as_ref()?;
        let usage = self.effective_usage();
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let cached_price = price.cached_input_per_mtok.unwrap_or(price.input_per_mtok);
        Some(
            cost_nano_usd(usage.input_tokens - cached, price.input_per_mtok)
                + cost_nano_usd(cached, cached_price)
                + cost_nano_usd(usage.output_tokens, price.output_per_mtok),
        )
    }

    /// The tokens the usage record will carry: the provider's, or the estimate.
    pub fn settled_usage(&self) -> Usage {
        self.effective_usage()
    }

    /// Run when the control plane's ledger has acknowledged this request's record.
    pub fn on_ack(&mut self, ack: OnAck) {
        self.ack = Some(ack);
    }

    /// The provider's counts, or an estimate (about four characters a token) when none came.
    fn effective_usage(&self) -> Usage {
        match self.usage {
            Some(u) => u,
            None if self.record.provider.is_empty() => Usage::default(),
            None => Usage {
                input_tokens: self.request_bytes.div_ceil(4),
                output_tokens: self.output_chars.div_ceil(4),
                ..Usage::default()
            },
        }
    }

    /// Records the request with the status the caller got (once; later calls do nothing).
    pub fn finish(&mut self, status: u16, failed: bool) {
        if self.done {
            return;
        }
        self.done = true;
        // Within the bounds the ledger accepts, whatever a provider reported.
        let clamp = |n: u64| n.min(MAX_TOKENS);
        let mut usage = self.effective_usage();
        usage.input_tokens = clamp(usage.input_tokens);
        usage.output_tokens = clamp(usage.output_tokens);
        usage.cached_input_tokens = clamp(usage.cached_input_tokens);
        usage.cache_creation_tokens = clamp(usage.cache_creation_tokens);
        usage.reasoning_tokens = clamp(usage.reasoning_tokens);
        let cost = self.cost().map(|c| c.clamp(0, MAX_COST_NANO_USD));
        let r = &mut self.record;
        r.status = status;
        r.failed = failed || status >= 400;
        r.input_tokens = usage.input_tokens;
        r.output_tokens = usage.output_tokens;
        r.cached_input_tokens = usage.cached_input_tokens;
        r.cache_creation_tokens = usage.cache_creation_tokens;
        r.reasoning_tokens = usage.reasoning_tokens;
        r.unpriced = cost.is_none() && !r.provider.is_empty();
        r.cost_nano_usd = cost.unwrap_or(0);
        r.saved_nano_usd = r.saved_nano_usd.clamp(0, MAX_COST_NANO_USD);
        r.latency_ms = millis(self.started.elapsed());
        r.ttft_ms = self
            .first_byte
            .map_or(0, |t| millis(t.duration_since(self.started)));
        if r.unpriced {
            self.metrics.unpriced.inc();
        }
        self.sink
            .record_acked(std::mem::take(&mut self.record), self.ack.take());
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // Dropped unfinished: the caller went away mid-stream.
        self.finish(CLIENT_CLOSED, true);
    }
}

fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// USD with nine decimals from nano-USD, exactly (no floating point).
pub fn format_usd(nano: i64) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let n = nano.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_is_formatted_exactly() {
        assert_eq!(format_usd(0), "0.000000000");
        assert_eq!(format_usd(1), "0.000000001");
        assert_eq!(format_usd(1_234_567_890), "1.234567890");
        assert_eq!(format_usd(-5), "-0.000000005");
    }
}
