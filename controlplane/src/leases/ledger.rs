//! The book's copy of the usage ledger's settled spend: per key id and per tenant name, per cap
//! period, as `store::ledger` tells it (a load, then every committed transaction in order).

use std::collections::HashMap;

use drover_proto::model::CapPeriod;

use crate::store::ledger::{PeriodSpend, SpendDelta, SpendScope};

/// Settled spend by (scope, period, period start). Unknown until the first load.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    loaded: bool,
    sums: HashMap<(SpendScope, CapPeriod, i64), i64>,
}

impl Ledger {
    /// Whether the first load arrived: until then nothing is known of the spend.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Replaces everything with a load.
    pub fn load(&mut self, sums: Vec<PeriodSpend>) {
        self.sums = sums
            .into_iter()
            .map(|s| ((s.scope, s.period, s.start_unix_ms), s.nano_usd))
            .collect();
        self.loaded = true;
    }

    /// Adds a committed transaction's costs. Before the first load they are in the load to
    /// come (the store sends both in commit order), so they are dropped.
    pub fn apply(&mut self, deltas: &[SpendDelta]) {
        if !self.loaded {
            return;
        }
        for d in deltas {
            let scopes = [
                (!d.tenant.is_empty()).then(|| SpendScope::Tenant(d.tenant.clone())),
                (!d.key_id.is_empty()).then(|| SpendScope::Key(d.key_id.clone())),
            ];
            for scope in scopes.into_iter().flatten() {
                for period in CapPeriod::ALL {
                    let sum = self
                        .sums
                        .entry((scope.clone(), period, period.start(d.time_unix_ms)))
                        .or_default();
                    *sum = sum.saturating_add(d.cost_nano_usd);
                }
            }
        }
    }

    /// The settled spend of `scope` in the period of `period` starting at `start`.
    pub fn spent(&self, scope: &SpendScope, period: CapPeriod, start: i64) -> i64 {
        // The key is owned; one clone per spend ask is cheap next to the message it serves.
        self.sums
            .get(&(scope.clone(), period, start))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the sums of periods that ended before `now_unix_ms`.
    pub fn collect_garbage(&mut self, now_unix_ms: i64) {
        self.sums
            .retain(|(_, period, start), _| period.bounds(*start).1.is_none_or(|end| end > now_unix_ms));
    }

    pub fn len(&self) -> usize {
        self.sums.len()
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::model::MS_PER_DAY;

    use super::*;

    /// 2026-11-01T00:00Z.
    const NOV_1: i64 = 1_793_491_200_000;

    fn delta(tenant: &str, key: &str, at: i64, cost: i64) -> SpendDelta {
        SpendDelta {
            tenant: tenant.into(),
            key_id: key.into(),
            time_unix_ms: at,
            cost_nano_usd: cost,
        }
    }

    #[test]
    fn applied_costs_count_after_the_load_in_every_period_they_fall_in() {
        let mut ledger = Ledger::default();
        ledger.apply(&[delta("acme", "key_a", NOV_1, 5)]);
        assert!(!ledger.is_loaded());
        let acme = SpendScope::Tenant("acme".into());
        let key_a = SpendScope::Key("key_a".into());
        ledger.load(vec![PeriodSpend {
            scope: acme.clone(),
            period: CapPeriod::Total,
            start_unix_ms: 0,
            nano_usd: 100,
        }]);
        assert_eq!(
            ledger.spent(&acme, CapPeriod::Total, 0),
            100,
            "the early delta is dropped"
        );
        ledger.apply(&[
            delta("acme", "key_a", NOV_1 + 5, 7),
            delta("acme", "", NOV_1 + MS_PER_DAY, 1),
        ]);
        assert_eq!(ledger.spent(&acme, CapPeriod::Total, 0), 108);
        assert_eq!(ledger.spent(&acme, CapPeriod::Month, NOV_1), 8);
        assert_eq!(ledger.spent(&acme, CapPeriod::Day, NOV_1), 7);
        assert_eq!(ledger.spent(&acme, CapPeriod::Day, NOV_1 + MS_PER_DAY), 1);
        assert_eq!(ledger.spent(&key_a, CapPeriod::Day, NOV_1), 7);
        assert_eq!(ledger.spent(&key_a, CapPeriod::Day, NOV_1 + MS_PER_DAY), 0);

        ledger.collect_garbage(NOV_1 + MS_PER_DAY + 1);
        assert_eq!(
            ledger.spent(&acme, CapPeriod::Day, NOV_1),
            0,
            "yesterday is forgotten"
        );
        assert_eq!(ledger.spent(&acme, CapPeriod::Day, NOV_1 + MS_PER_DAY), 1);
        assert_eq!(ledger.spent(&acme, CapPeriod::Month, NOV_1), 8);
        assert_eq!(ledger.spent(&acme, CapPeriod::Total, 0), 108);
    }
}
