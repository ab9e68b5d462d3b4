//! Per-target health: a circuit breaker and a 429 cool-down, plus the retry budget.
//!
//! All lock-free: atomics only. Health is keyed by the stable target id (`provider/model`)
//! in a [`HealthRegistry`] that lives beside the policy, so a policy swap keeps what was
//! learnt about a target. Route targets (chosen by operators) are kept exactly as long as a
//! policy names them and hold their `Arc` directly. Direct `provider/model` names are chosen by
//! callers, so their health lives in a bounded cache ([`MAX_DIRECT_TARGETS`] entries, least
//! recently used out first): unique names cannot grow memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use moka::sync::Cache;

pub use crate::clock::{duration_ms, now_ms};

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failed requests that open the breaker. One request counts at most once per
    /// target, however often it retried that target.
    pub failures: u32,
    /// How long an open breaker first skips the target before one probe is let through. Each
    /// time it opens again without having healed, the period doubles, up to
    /// [`MAX_OPEN_FACTOR`] times this.
    pub open_for: Duration,
}

/// The longest open period, as a multiple of [`BreakerConfig::open_for`].
pub const MAX_OPEN_FACTOR: u32 = 10;

/// What a caller may do with a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed breaker: go ahead.
    Normal,
    /// Half-open breaker: this request is the one probe.
    Probe,
}

/// Health of one target: an outlier detector in the manner of Envoy's. `failures`
/// consecutive failed requests open the breaker (eject the target) for `open_for`; after that
/// one probe request is let through, which closes it or opens it again. Every opening that
/// follows another without enough healthy time in between doubles the open period (up to
/// [`MAX_OPEN_FACTOR`] × `open_for`); each `open_for` spent closed forgives one opening.
#[derive(Debug, Default)]
pub struct TargetHealth {
    consecutive_failures: AtomicU32,
    /// 0 when closed; otherwise when the breaker may be probed.
    open_until: AtomicU64,
    /// When the current probe started; 0 when none is out.
    probe_started: AtomicU64,
    /// Provider-asked pause (429 retry-after): no request before this time.
    cooldown_until: AtomicU64,
    /// Openings not yet forgiven; the next open period is `open_for × 2^ejections`, capped.
    ejections: AtomicU32,
    /// When the breaker last closed; 0 while open or before it ever opened.
    closed_at: AtomicU64,
}

impl TargetHealth {
    /// Whether the target may be tried now, and how.
    pub fn permit(&self, now: u64, cfg: &BreakerConfig) -> Option<Permit> {
        if self.cooldown_until.load(Ordering::Relaxed) > now {
            return None;
        }
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Some(Permit::Normal);
        }
        if now < open_until {
            return None;
        }
        // Half-open: one probe at a time; a probe that never reported (its request was
        // abandoned) is replaced after another open period.
        let started = self.probe_started.load(Ordering::Acquire);
        let stale = started != 0 && now.saturating_sub(started) >= duration_ms(cfg.open_for);
        if (started == 0 || stale)
            && self
                .probe_started
                .compare_exchange(started, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(Permit::Probe);
        }
        None
    }

    /// The target answered: the failure streak ends, and an open breaker closes.
    pub fn on_success(&self, now: u64) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.closed_at.store(now, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Release);
            self.probe_started.store(0, Ordering::Release);
        }
    }

    /// A request failed on this target. Call it once per request and target: retries of the
    /// same request are the same failure (except a probe, which always reports).
    pub fn on_failure(&self, permit: Permit, now: u64, cfg: &BreakerConfig) {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        match permit {
            // The probe failed: open again, for longer.
            Permit::Probe => {
                let ejections = self.ejections.load(Ordering::Relaxed);
                self.ejections
                    .store(ejections.saturating_add(1), Ordering::Relaxed);
                self.open_until
                    .store(now.saturating_add(open_ms(cfg, ejections)), Ordering::Release);
                self.probe_started.store(0, Ordering::Release);
            }
            Permit::Normal if failures >= cfg.failures => {
                // Healthy time since the breaker last closed forgives earlier openings.
                let closed_at = self.closed_at.load(Ordering::Relaxed);
                let healed = if closed_at == 0 {
                    0
                } else {
                    now.saturating_sub(closed_at) / duration_ms(cfg.open_for).max(1)
                };
                let ejections =
                    u32::try_from(u64::from(self.ejections.load(Ordering::Relaxed)).saturating_sub(healed))
                        .unwrap_or(0);
                let until = now.saturating_add(open_ms(cfg, ejections));
                // Only the failure that finds it closed opens it: failures of requests already
                // in flight do not extend the period.
                if self
                    .open_until
                    .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.ejections
                        .store(ejections.saturating_add(1), Ordering::Relaxed);
                    self.closed_at.store(0, Ordering::Relaxed);
                    self.probe_started.store(0, Ordering::Release);
                }
            }
            Permit::Normal => {}
        }
    }

    /// The provider asked for a pause (429): skip the target until then.
    pub fn cool_down(&self, until: u64) {
        self.cooldown_until.fetch_max(until, Ordering::Relaxed);
    }

    /// When the target can next be tried, if it cannot be now.
    pub fn available_at(&self, now: u64) -> Option<u64> {
        let at = self
            .cooldown_until
            .load(Ordering::Relaxed)
            .max(self.open_until.load(Ordering::Relaxed));
        (at > now).then_some(at)
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }
}

/// The open period after `ejections` earlier unforgiven openings: `open_for × 2^ejections`,
/// at most `MAX_OPEN_FACTOR × open_for`.
fn open_ms(cfg: &BreakerConfig, ejections: u32) -> u64 {
    let base = duration_ms(cfg.open_for);
    base.saturating_mul(1u64 << ejections.min(16))
        .min(base.saturating_mul(u64::from(MAX_OPEN_FACTOR)))
}

/// Most direct (`provider/model` named by callers) targets whose health is remembered.
pub const MAX_DIRECT_TARGETS: u64 = 1024;

/// Health of every target, by id. Outlives policy swaps.
#[derive(Debug)]
pub struct HealthRegistry {
    /// Targets of the routes of the serving policy (and the one being compiled).
    configured: DashMap<String, Arc<TargetHealth>>,
    /// Direct targets, bounded.
    direct: Cache<String, Arc<TargetHealth>>,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::with_direct_capacity(MAX_DIRECT_TARGETS)
    }
}

impl HealthRegistry {
    /// A registry that remembers the health of at most `direct` direct targets.
    pub fn with_direct_capacity(direct: u64) -> Self {
        HealthRegistry {
            configured: DashMap::new(),
            direct: Cache::new(direct),
        }
    }

    /// The health of a route target, created on first use (or taken over from the direct
    /// target of the same id). Called when a policy is compiled.
    pub fn configured(&self, id: &str) -> Arc<TargetHealth> {
        if let Some(h) = self.configured.get(id) {
            return h.clone();
        }
        let taken = self.direct.remove(id);
        self.configured
            .entry(id.to_owned())
            .or_insert_with(|| taken.unwrap_or_default())
            .clone()
    }

    /// The health of a direct target: the route target's of the same id if there is one, else
    /// one from the bounded cache (a fresh one for a name evicted or never cached).
    pub fn direct(&self, id: &str) -> Arc<TargetHealth> {
        if let Some(h) = self.configured.get(id) {
            return h.clone();
        }
        self.direct.get_with_by_ref(id, Arc::default)
    }

    /// Keeps the route targets `keep` accepts and the direct targets whose provider
    /// `keep_provider` accepts; forgets the rest. Called once a policy is compiled.
    pub fn retain(&self, keep: impl Fn(&str) -> bool, keep_provider: impl Fn(&str) -> bool) {
        self.configured.retain(|id, _| keep(id));
        let provider = |id: &str| id.split_once('/').map_or(id, |(p, _)| p).to_owned();
        let gone: Vec<Arc<String>> = self
            .direct
            .iter()
            .filter(|(id, _)| !keep_provider(&provider(id)))
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            self.direct.invalidate(id.as_str());
        }
    }

    /// Targets remembered: route targets, and direct targets (approximately: the cache settles
    /// its count in the background; call [`HealthRegistry::settle`] first for an exact one).
    pub fn len(&self) -> (usize, u64) {
        (self.configured.len(), self.direct.entry_count())
    }

    /// Applies the cache's pending evictions now.
    pub fn settle(&self) {
        self.direct.run_pending_tasks();
    }

    /// Number of targets whose breaker is open now.
    pub fn open_count(&self) -> usize {
        let direct = self.direct.iter().filter(|(_, h)| h.is_open()).count();
        self.configured.iter().filter(|h| h.is_open()).count() + direct
    }
}

/// Retry budget (as in Finagle and linkerd): each request deposits `ratio` of a retry,
/// each retry withdraws one, and `min_per_sec` retries are always allowed. Keeps retries
/// from multiplying load on a failing upstream.
#[derive(Debug)]
pub struct RetryBudget {
    /// Balance in thousandths of a retry.
    balance: AtomicI64,
    last_refill_sec: AtomicU64,
    deposit: i64,
    min_per_sec: i64,
    max: i64,
}

const MILLI: i64 = 1000;

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        let min_per_sec = i64::from(min_per_sec) * MILLI;
        // Allow a burst of up to ten seconds' minimum plus a hundred retries.
        let max = min_per_sec * 10 + 100 * MILLI;
        let deposit = (ratio.clamp(0.0, 1.0) * 1000.0).round();
        RetryBudget {
            balance: AtomicI64::new(min_per_sec),
            last_refill_sec: AtomicU64::new(0),
            #[allow(clippy::cast_possible_truncation)]
            deposit: deposit as i64,
            min_per_sec,
            max,
        }
    }

    fn add(&self, amount: i64) {
        let max = self.max;
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + amount).min(max))
            });
    }

    /// Called once per original request.
    pub fn deposit(&self) {
        if self.deposit > 0 {
            self.add(self.deposit);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self) -> bool {
        let sec = now_ms() / 1000;
        let last = self.last_refill_sec.load(Ordering::Relaxed);
        if sec != last
            && self
                .last_refill_sec
                .compare_exchange(last, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.add(self.min_per_sec);
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failures: 3,
        open_for: Duration::from_millis(1000),
    };

    #[tokio::test(start_paused = true)]
    async fn the_breaker_runs_on_the_clock_tests_can_pause() {
        let h = TargetHealth::default();
        for _ in 0..3 {
            h.on_failure(Permit::Normal, now_ms(), &CFG);
        }
        assert_eq!(h.permit(now_ms(), &CFG), None, "open");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(h.permit(now_ms(), &CFG), None, "still open a millisecond early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(h.permit(now_ms(), &CFG), Some(Permit::Probe));
        h.on_success(now_ms());
        assert_eq!(h.permit(now_ms(), &CFG), Some(Permit::Normal));
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_refills_each_second_of_paused_time() {
        let budget = RetryBudget::new(0.0, 2);
        assert!(budget.try_withdraw() && budget.try_withdraw());
        assert!(!budget.try_withdraw(), "two retries a second");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_withdraw(), "a new second brings new retries");
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once() {
        let h = TargetHealth::default();
        for _ in 0..2 {
            assert_eq!(h.permit(10, &CFG), Some(Permit::Normal));
            h.on_failure(Permit::Normal, 10, &CFG);
        }
        h.on_success(10);
        for _ in 0..3 {
            h.on_failure(Permit::Normal, 10, &CFG);
        }
        assert_eq!(h.permit(500, &CFG), None, "open");
        assert_eq!(h.available_at(500), Some(1010));
        assert_eq!(h.permit(1010, &CFG), Some(Permit::Probe));
        assert_eq!(h.permit(1011, &CFG), None, "only one probe at a time");
        h.on_failure(Permit::Probe, 1020, &CFG);
        assert_eq!(h.permit(1500, &CFG), None, "failed probe reopens");
        assert_eq!(
            h.available_at(1500),
            Some(3020),
            "for twice as long: the target did not heal"
        );
        assert_eq!(h.permit(3020, &CFG), Some(Permit::Probe));
        h.on_success(3020);
        assert_eq!(h.permit(3021, &CFG), Some(Permit::Normal));
        assert!(!h.is_open());
    }

    /// Fails `n` distinct requests at `now`.
    fn fail(h: &TargetHealth, n: u32, now: u64) {
        for _ in 0..n {
            h.on_failure(Permit::Normal, now, &CFG);
        }
    }

    #[test]
    fn open_periods_double_while_the_target_keeps_failing_and_are_capped() {
        let h = TargetHealth::default();
        let mut now = 0;
        let mut periods = Vec::new();
        for _ in 0..7 {
            fail(&h, 3, now);
            let until = h.available_at(now).unwrap();
            periods.push(until - now);
            // The probe gets through, the target answers, and fails again at once.
            assert_eq!(h.permit(until, &CFG), Some(Permit::Probe));
            h.on_success(until);
            now = until;
        }
        assert_eq!(periods, [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn a_failed_probe_opens_for_longer_too_and_healthy_time_forgives() {
        let h = TargetHealth::default();
        fail(&h, 3, 0);
        assert_eq!(h.available_at(0), Some(1000));
        assert_eq!(h.permit(1000, &CFG), Some(Permit::Probe));
        h.on_failure(Permit::Probe, 1000, &CFG);
        assert_eq!(h.available_at(1000), Some(3000));
        assert_eq!(h.permit(3000, &CFG), Some(Permit::Probe));
        h.on_failure(Permit::Probe, 3000, &CFG);
        assert_eq!(h.available_at(3000), Some(7000), "third opening: 4 × base");
        assert_eq!(h.permit(7000, &CFG), Some(Permit::Probe));
        h.on_success(7000);

        // Two base periods of health forgive two of the three openings: the next one is 2 × base.
        fail(&h, 3, 9000);
        assert_eq!(h.available_at(9000), Some(11_000));
        assert_eq!(h.permit(11_000, &CFG), Some(Permit::Probe));
        h.on_success(11_000);

        // Long health forgives everything: back to the base period.
        fail(&h, 3, 100_000);
        assert_eq!(h.available_at(100_000), Some(101_000));
    }

    #[test]
    fn failures_while_open_neither_extend_nor_count_as_openings() {
        let h = TargetHealth::default();
        fail(&h, 3, 0);
        fail(&h, 5, 500);
        assert_eq!(
            h.available_at(500),
            Some(1000),
            "in-flight failures do not extend it"
        );
        assert_eq!(h.permit(1000, &CFG), Some(Permit::Probe));
        h.on_success(1000);
        fail(&h, 3, 1000);
        assert_eq!(
            h.available_at(1000),
            Some(3000),
            "second opening, not the seventh"
        );
    }

    #[test]
    fn a_success_ends_the_streak() {
        let h = TargetHealth::default();
        fail(&h, 2, 0);
        h.on_success(0);
        fail(&h, 2, 0);
        assert_eq!(h.permit(0, &CFG), Some(Permit::Normal), "no three in a row");
        fail(&h, 1, 0);
        assert_eq!(h.permit(0, &CFG), None);
    }

    #[test]
    fn abandoned_probe_is_replaced() {
        let h = TargetHealth::default();
        for _ in 0..3 {
            h.on_failure(Permit::Normal, 0, &CFG);
        }
        assert_eq!(h.permit(1000, &CFG), Some(Permit::Probe));
        assert_eq!(h.permit(1500, &CFG), None);
        assert_eq!(h.permit(2000, &CFG), Some(Permit::Probe));
    }

    #[test]
    fn cool_down_skips_until_its_time() {
        let h = TargetHealth::default();
        h.cool_down(100);
        assert_eq!(h.permit(50, &CFG), None);
        assert_eq!(h.available_at(50), Some(100));
        assert_eq!(h.permit(100, &CFG), Some(Permit::Normal));
    }

    #[test]
    fn registry_shares_state_by_id_and_forgets_removed_targets() {
        let r = HealthRegistry::default();
        assert!(Arc::ptr_eq(&r.configured("a/m"), &r.configured("a/m")));
        assert!(
            Arc::ptr_eq(&r.configured("a/m"), &r.direct("a/m")),
            "direct use shares the route's"
        );
        let b = r.configured("b/m");
        let b_direct = r.direct("b/x");
        let a_direct = r.direct("a/x");
        assert!(Arc::ptr_eq(&a_direct, &r.direct("a/x")));
        r.retain(|id| id == "a/m", |p| p == "a");
        assert!(
            !Arc::ptr_eq(&b, &r.configured("b/m")),
            "removed route targets are forgotten"
        );
        assert!(
            !Arc::ptr_eq(&b_direct, &r.direct("b/x")),
            "so are direct targets of removed providers"
        );
        assert!(Arc::ptr_eq(&a_direct, &r.direct("a/x")));
        // A direct target that becomes a route target keeps what was learnt about it.
        assert!(Arc::ptr_eq(&a_direct, &r.configured("a/x")));
    }

    #[test]
    fn direct_targets_are_bounded() {
        let r = HealthRegistry::with_direct_capacity(16);
        for i in 0..1000 {
            let h = r.direct(&format!("p/model-{i}"));
            h.cool_down(5);
        }
        r.settle();
        let (configured, direct) = r.len();
        assert_eq!(configured, 0);
        assert!(direct <= 16, "{direct} direct targets kept");
    }

    #[test]
    fn retry_budget_is_bounded_by_deposits() {
        let budget = RetryBudget::new(0.5, 0);
        assert!(!budget.try_withdraw());
        budget.deposit();
        assert!(!budget.try_withdraw(), "half a retry is not a retry");
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        let generous = RetryBudget::new(0.0, 2);
        assert!(generous.try_withdraw());
        assert!(generous.try_withdraw());
    }
}
