//! Limits of the protocol that both ends must agree on, defined once. A data plane, the
//! control plane and the CLI each configure their gRPC channels from these, so a message one
//! side may send is never one the other side refuses for size.

/// Largest policy message (a snapshot carries the whole policy; 100k keys must fit), and the
/// largest admin answer. tonic's default of 4 MiB is far too small for that.
pub const MAX_POLICY_MESSAGE_BYTES: usize = 256 << 20;

/// Largest admin request, or data-plane message on the policy stream (acknowledgements):
/// far beyond any valid one (a route has at most 64 targets, a key 8 KiB), so that a huge one
/// is refused before it costs much memory, yet room enough that an oversized route gets a
/// clear validation error.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Most usage records in one batch.
pub const MAX_USAGE_BATCH: usize = 10_000;

/// Largest usage message either way, bytes: a full batch of records of about 1.5 KiB (long
/// names) with room to spare.
pub const MAX_USAGE_MESSAGE_BYTES: usize = 32 << 20;

/// Largest token count accepted in one usage record (each of input, output, cached, …): far
/// beyond any real request, and small enough that sums over billions of records fit an `i64`.
pub const MAX_USAGE_TOKENS: u64 = 1_000_000_000_000;

/// Largest cost (or saving) accepted in one usage record, nano-USD: 1M USD.
pub const MAX_USAGE_NANO_USD: i64 = 1_000_000_000_000_000;

/// Usage records carry times from the Unix epoch up to (excluding) this one, 10000-01-01T00:00Z,
/// so that every day is a four-digit-year `YYYY-MM-DD`.
pub const MAX_USAGE_TIME_UNIX_MS: i64 = 253_402_300_800_000;

/// Most asks in one lease message, and most holdings (a hello lists every lease held).
pub const MAX_LEASE_ASKS: usize = 10_000;
pub const MAX_LEASE_HOLDINGS: usize = 100_000;

/// Largest lease message either way, bytes: a hello with every holding (about 60 bytes each)
/// with room to spare.
pub const MAX_LEASE_MESSAGE_BYTES: usize = 16 << 20;

/// Longest request id accepted in a usage record.
pub const MAX_REQUEST_ID_LEN: usize = 128;

const _: () = assert!(MAX_REQUEST_BYTES < MAX_POLICY_MESSAGE_BYTES);

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::model::{MAX_NAME_LEN, MAX_PROVIDER_NAME_LEN, MAX_REQUEST_MODEL_LEN};
    use crate::pb;

    #[test]
    fn a_full_batch_of_the_largest_records_fits_a_usage_message() {
        let long = |n: usize| "x".repeat(n);
        let record = pb::UsageRecord {
            request_id: long(MAX_REQUEST_ID_LEN),
            time_unix_ms: MAX_USAGE_TIME_UNIX_MS - 1,
            tenant: long(MAX_NAME_LEN),
            key_id: long(MAX_NAME_LEN),
            alias: long(MAX_REQUEST_MODEL_LEN),
            provider: long(MAX_PROVIDER_NAME_LEN),
            model: long(MAX_REQUEST_MODEL_LEN),
            input_tokens: MAX_USAGE_TOKENS,
            output_tokens: MAX_USAGE_TOKENS,
            cached_input_tokens: MAX_USAGE_TOKENS,
            cache_creation_tokens: MAX_USAGE_TOKENS,
            reasoning_tokens: MAX_USAGE_TOKENS,
            cost_nano_usd: MAX_USAGE_NANO_USD,
            saved_nano_usd: MAX_USAGE_NANO_USD,
            latency_ms: u32::MAX,
            ttft_ms: u32::MAX,
            status: 599,
            policy_version: u64::MAX,
            endpoint: long(64),
            cache_hit: true,
            unpriced: true,
            stream: true,
            failed: true,
        };
        let batch = pb::UsageBatch {
            records: vec![record; MAX_USAGE_BATCH],
            ..Default::default()
        };
        let len = batch.encoded_len();
        assert!(
            len < MAX_USAGE_MESSAGE_BYTES,
            "a full batch is {len} bytes; the limit is {MAX_USAGE_MESSAGE_BYTES}"
        );
    }
}
