//! The data plane's monotonic clock in milliseconds, for state kept in atomics (breakers,
//! cool-downs, connection timers). It reads tokio's clock, so tests can pause and advance it.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds on a monotonic clock (since first use), never 0.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time() {
        let before = now_ms();
        assert!(before >= 1);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(now_ms() - before, 90_000);
    }
}
