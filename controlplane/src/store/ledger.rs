//! What the usage ledger settled, told to the lease book in commit order.
//!
//! The book (`crate::leases`) grants spend against a cap's remaining budget, which is the cap
//! minus the ledger's settled spend in the period. It keeps those sums in memory and learns
//! them from one unbounded channel fed by the store thread: first the sums of the current UTC
//! day, month and all time per key id and per tenant name ([`LedgerEvent::Loaded`], read from
//! the `usage_daily` rollups), then the cost of every usage transaction that commits
//! ([`LedgerEvent::Applied`], sent after the commit and before the data plane's batch is
//! answered). Both come from the store thread, so the channel's order is the commit order: a
//! transaction is either in the load or after it, never in both.
//!
//! Not here: what the book does with the sums (`crate::leases::ledger`).

use std::collections::HashMap;

use drover_proto::model::{CapPeriod, UtcDay};
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::Store;
use crate::error::StoreError;

/// Whose spend a sum is: usage records carry the tenant's name and the key's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpendScope {
    Tenant(String),
    Key(String),
}

/// The settled spend of one scope in one cap period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodSpend {
    pub scope: SpendScope,
    pub period: CapPeriod,
    /// The period's start, Unix milliseconds (`CapPeriod::start`; 0 for total).
    pub start_unix_ms: i64,
    pub nano_usd: i64,
}

/// The cost of newly applied usage records of one (tenant, key) on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendDelta {
    /// The tenant's name; empty for records without a tenant.
    pub tenant: String,
    /// The key's id; empty for records without a key.
    pub key_id: String,
    /// A time in the records' UTC day (its midnight): every cap period is a union of days.
    pub time_unix_ms: i64,
    pub cost_nano_usd: i64,
}

/// What the store tells the book, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    /// Every settled sum of the current day and month (and of later ones, should records from
    /// the future exist) and of all time, per key id and per tenant name, as of the moment of
    /// the load. Replaces whatever the receiver knew.
    Loaded(Vec<PeriodSpend>),
    /// The cost of one committed usage transaction's new records (zero costs left out).
    Applied(Vec<SpendDelta>),
}

/// The receiving end of the ledger's events.
pub type LedgerEvents = mpsc::UnboundedReceiver<LedgerEvent>;

impl Store {
    /// Starts telling the ledger's settled spend: the returned channel first carries a
    /// [`LedgerEvent::Loaded`] with the sums as of now, then one [`LedgerEvent::Applied`] per
    /// usage transaction committed after it. A later call replaces the channel (the earlier
    /// receiver sees it closed).
    pub async fn subscribe_ledger(&self) -> Result<LedgerEvents, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.call(move |db| {
            let now = drover_proto::model::now_unix_ms();
            let sums = load(&db.conn, now)?;
            // The receiver is alive: it is returned below, after this job.
            let _ = tx.send(LedgerEvent::Loaded(sums));
            db.ledger = Some(tx);
            Ok(())
        })
        .await?;
        Ok(rx)
    }
}

impl Store {
    /// Until when a lease granted or renewed before this start may still be spent.
    pub async fn lease_horizon(&self) -> Result<i64, StoreError> {
        self.call(|db| super::meta::lease_horizon(&db.conn)).await
    }

    /// Records that leases granted or renewed from now on may be spent until `unix_ms`.
    pub async fn extend_lease_horizon(&self, unix_ms: i64) -> Result<(), StoreError> {
        self.call(move |db| super::meta::extend_lease_horizon(&db.conn, unix_ms))
            .await
    }
}

/// Sends the cost of committed records, if someone listens.
pub(super) fn tell(ledger: Option<&mpsc::UnboundedSender<LedgerEvent>>, deltas: Vec<SpendDelta>) {
    if let Some(ledger) = ledger
        && !deltas.is_empty()
    {
        // A receiver gone (the control plane stopping) is no error of the ledger's.
        let _ = ledger.send(LedgerEvent::Applied(deltas));
    }
}

/// Per (tenant, key) row: the sum of one period.
type Rows = Vec<(String, String, i64, i64)>;

/// The settled sums as of `now_unix_ms`, from the rollups (which cover every record applied).
fn load(conn: &Connection, now_unix_ms: i64) -> Result<Vec<PeriodSpend>, StoreError> {
    let today = UtcDay::of_unix_ms(now_unix_ms);
    let month_start = UtcDay::of_unix_ms(CapPeriod::Month.start(now_unix_ms));
    let days = rows(
        conn,
        "SELECT tenant, key_id, day, SUM(cost_nano_usd) FROM usage_daily WHERE day >= ?1
         GROUP BY tenant, key_id, day",
        &today.to_string(),
        |day| UtcDay::parse(day).map(UtcDay::start_unix_ms),
    )?;
    let months = rows(
        conn,
        "SELECT tenant, key_id, substr(day, 1, 7), SUM(cost_nano_usd) FROM usage_daily WHERE day >= ?1
         GROUP BY tenant, key_id, substr(day, 1, 7)",
        &month_start.to_string(),
        |month| UtcDay::parse(&format!("{month}-01")).map(UtcDay::start_unix_ms),
    )?;
    let totals = rows(
        conn,
        "SELECT tenant, key_id, '', SUM(cost_nano_usd) FROM usage_daily WHERE day >= ?1
         GROUP BY tenant, key_id",
        "",
        |_| Some(0),
    )?;
    let mut sums: HashMap<(SpendScope, CapPeriod, i64), i64> = HashMap::new();
    for (period, rows) in [
        (CapPeriod::Day, days),
        (CapPeriod::Month, months),
        (CapPeriod::Total, totals),
    ] {
        for (tenant, key_id, start, cost) in rows {
            for scope in scopes(tenant, key_id) {
                let sum = sums.entry((scope, period, start)).or_default();
                *sum = sum.saturating_add(cost);
            }
        }
    }
    Ok(sums
        .into_iter()
        .filter(|(_, nano_usd)| *nano_usd != 0)
        .map(|((scope, period, start_unix_ms), nano_usd)| PeriodSpend {
            scope,
            period,
            start_unix_ms,
            nano_usd,
        })
        .collect())
}

/// Runs a grouping query whose third column names a period, mapped to its start by `start`.
fn rows(
    conn: &Connection,
    sql: &str,
    since: &str,
    start: impl Fn(&str) -> Option<i64>,
) -> Result<Rows, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([since])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let period: String = row.get(2)?;
        let at = start(&period)
            .ok_or_else(|| StoreError::Corrupt(format!("usage rollup of an invalid day {period:?}")))?;
        out.push((row.get(0)?, row.get(1)?, at, row.get(3)?));
    }
    Ok(out)
}

/// The scopes a record of `tenant` and `key_id` counts for.
fn scopes(tenant: String, key_id: String) -> impl Iterator<Item = SpendScope> {
    let tenant = (!tenant.is_empty()).then_some(SpendScope::Tenant(tenant));
    let key = (!key_id.is_empty()).then_some(SpendScope::Key(key_id));
    tenant.into_iter().chain(key)
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{MS_PER_DAY, UsageRecord, now_unix_ms};

    use super::*;
    use crate::store::crypto::MasterKey;

    fn key() -> MasterKey {
        MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn record(id: &str, time_unix_ms: i64, tenant: &str, key_id: &str, cost: i64) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            time_unix_ms,
            tenant: tenant.into(),
            key_id: key_id.into(),
            alias: "m".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            cost_nano_usd: cost,
            status: 200,
            ..Default::default()
        }
    }

    fn sum(load: &[PeriodSpend], scope: &SpendScope, period: CapPeriod, start: i64) -> i64 {
        load.iter()
            .filter(|s| &s.scope == scope && s.period == period && s.start_unix_ms == start)
            .map(|s| s.nano_usd)
            .sum()
    }

    #[tokio::test]
    async fn the_load_sums_day_month_and_total_and_later_commits_follow_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(&dir.path().join("d.db"), key()).await.unwrap();
        let now = now_unix_ms();
        let day = CapPeriod::Day.start(now);
        let month = CapPeriod::Month.start(now);
        let long_ago = month - 40 * MS_PER_DAY;
        store
            .report_usage(
                "dp".into(),
                vec![
                    record("a", now, "acme", "key_a", 100),
                    record("b", now, "acme", "", 10),
                    record("c", long_ago, "acme", "key_a", 1_000),
                    record("d", now, "", "key_b", 7),
                    record("e", now, "globex", "key_c", 0),
                ],
            )
            .await
            .unwrap();
        let mut events = store.subscribe_ledger().await.unwrap();
        let Some(LedgerEvent::Loaded(load)) = events.recv().await else {
            panic!("the load comes first");
        };
        let acme = SpendScope::Tenant("acme".into());
        let key_a = SpendScope::Key("key_a".into());
        assert_eq!(sum(&load, &acme, CapPeriod::Day, day), 110);
        assert_eq!(sum(&load, &acme, CapPeriod::Total, 0), 1_110);
        assert_eq!(sum(&load, &key_a, CapPeriod::Total, 0), 1_100);
        assert_eq!(sum(&load, &key_a, CapPeriod::Day, day), 100);
        let month_sum = sum(&load, &key_a, CapPeriod::Month, month);
        assert_eq!(month_sum, 100, "the old record is in the total only");
        assert_eq!(
            sum(&load, &SpendScope::Key("key_b".into()), CapPeriod::Day, day),
            7
        );
        assert!(
            !load
                .iter()
                .any(|s| s.scope == SpendScope::Tenant("globex".into())),
            "zero sums are left out"
        );
        assert!(!load.iter().any(|s| s.scope == SpendScope::Tenant(String::new())));

        // After the load: one event per committed transaction, duplicates not counted.
        store
            .report_usage(
                "dp".into(),
                vec![
                    record("a", now, "acme", "key_a", 100),
                    record("f", now, "acme", "key_a", 5),
                    record("g", now, "acme", "key_a", 6),
                ],
            )
            .await
            .unwrap();
        let Some(LedgerEvent::Applied(deltas)) = events.recv().await else {
            panic!("an applied event");
        };
        assert_eq!(
            deltas,
            vec![SpendDelta {
                tenant: "acme".into(),
                key_id: "key_a".into(),
                time_unix_ms: day,
                cost_nano_usd: 11,
            }]
        );
        // A batch of duplicates only, or of zero costs, tells nothing.
        store
            .report_usage("dp".into(), vec![record("f", now, "acme", "key_a", 5)])
            .await
            .unwrap();
        store
            .report_usage("dp".into(), vec![record("z", now, "acme", "key_a", 0)])
            .await
            .unwrap();
        assert!(events.try_recv().is_err());

        // Subscribing again replaces the channel.
        let mut again = store.subscribe_ledger().await.unwrap();
        assert!(matches!(again.recv().await, Some(LedgerEvent::Loaded(_))));
        assert!(events.recv().await.is_none(), "the first channel is closed");
        thread.close().await.unwrap();
    }
}
