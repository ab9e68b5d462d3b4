//! The usage ledger: every metered request, applied exactly once, with daily rollups.
//!
//! Four tables (migrations 3 and 5):
//!
//! * `usage`: one raw row per applied record, keyed and clustered by `(time_unix_ms, request_id)`
//!   (`WITHOUT ROWID`). That pair is the record's identity: a data plane stamps both when the
//!   request ends, never changes them when it resends, and never gives two requests one id (a
//!   caller's `x-request-id` gets 48 random bits appended). Records arrive roughly in time order,
//!   so a batch appends to the end of one B-tree, and time ranges are read from the table
//!   itself. A batch is applied in one transaction, in multi-row inserts that fail whole on a
//!   record stored already (then that group goes in row by row with `ON CONFLICT DO NOTHING`,
//!   after a look into `usage_seen`), and only the records actually inserted are added to the
//!   rollups, so a resent batch changes nothing. The answer is given after the commit
//!   (`synchronous=FULL`). Batches that queue up while the store thread is busy share one
//!   transaction (group commit: one fsync for all); if it fails, each is retried alone, so each
//!   is still applied whole or not at all and answered only after the commit.
//! * `usage_daily`: totals per (UTC day `YYYY-MM-DD`, tenant, key, provider, model) over **every**
//!   record ever applied. It is updated in the same transaction as the raw rows and never
//!   touched by compaction, so it always equals the sum of the records it covers.
//! * `usage_state`: the compaction watermark `W`, a UTC midnight. Days before `W` are
//!   *compacted*: their raw rows are being, or have been, deleted, and they exist only in
//!   `usage_daily`.
//! * `usage_seen`: the request ids of deleted raw rows, kept for [`DEDUP_WINDOW`] after their
//!   deletion, so that a resend of a compacted record is still a duplicate.
//!
//! Retention (`Store::compact_usage`): `W` moves to the UTC midnight at or before
//! `now - retention`, then the raw rows older than `W` are deleted in transactions of
//! [`COMPACTION_BATCH`] rows, their ids moving to `usage_seen`. Between batches the store thread
//! serves other jobs, so ingestion waits for one small transaction at most. Rollups need no
//! work: they already hold everything.
//!
//! Queries (`Store::query_usage`) split the half-open range `[since, until)` so that no record
//! is counted twice: whole UTC days, and compacted days that begin inside the range, are read
//! from `usage_daily`; the remaining partial days (at most one at each end) from the raw rows of
//! uncompacted days, to the millisecond. A range that starts or ends inside a compacted day is
//! therefore resolved to whole days (a compacted day counts when its midnight is in the range),
//! which keeps ranges additive: `[a, m) + [m, b) = [a, b)` always. Most queries touch
//! `usage_daily` only and are short.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use drover_proto::model::{MAX_USAGE_TIME_UNIX_MS, MS_PER_DAY, UsageRecord, UtcDay};
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::Store;
use super::ledger::{LedgerEvent, SpendDelta};
use crate::error::StoreError;

/// Raw rows deleted per compaction transaction.
pub const COMPACTION_BATCH: usize = 5_000;
/// How long the ids of compacted records are kept, after compaction, to recognise resends.
/// A data plane must not resend a record later than this after first sending it (its spool
/// drops older records); within it, exactly once holds across compaction.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Totals over a set of records. Counts are `u64`, money `i64` nano-USD; all sums are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cost_nano_usd: i64,
    pub cache_hits: u64,
    pub saved_nano_usd: i64,
    pub failed: u64,
    pub unpriced: u64,
}

impl UsageTotals {
    /// The totals of one record.
    pub fn of(r: &UsageRecord) -> Self {
        UsageTotals {
            requests: 1,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cost_nano_usd: r.cost_nano_usd,
            cache_hits: u64::from(r.cache_hit),
            saved_nano_usd: r.saved_nano_usd,
            failed: u64::from(r.failed),
            unpriced: u64::from(r.unpriced),
        }
    }

    /// Adds `other`; fails instead of wrapping.
    pub fn add(&mut self, other: &UsageTotals) -> Result<(), StoreError> {
        let overflow = || StoreError::Corrupt("usage totals overflow".to_owned());
        let add_u = |a: u64, b: u64| a.checked_add(b).ok_or_else(overflow);
        let add_i = |a: i64, b: i64| a.checked_add(b).ok_or_else(overflow);
        *self = UsageTotals {
            requests: add_u(self.requests, other.requests)?,
            input_tokens: add_u(self.input_tokens, other.input_tokens)?,
            output_tokens: add_u(self.output_tokens, other.output_tokens)?,
            cached_input_tokens: add_u(self.cached_input_tokens, other.cached_input_tokens)?,
            cost_nano_usd: add_i(self.cost_nano_usd, other.cost_nano_usd)?,
            cache_hits: add_u(self.cache_hits, other.cache_hits)?,
            saved_nano_usd: add_i(self.saved_nano_usd, other.saved_nano_usd)?,
            failed: add_u(self.failed, other.failed)?,
            unpriced: add_u(self.unpriced, other.unpriced)?,
        };
        Ok(())
    }
}

/// How query results are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One group, named `""`.
    None,
    Model,
    Key,
    /// `YYYY-MM-DD`, UTC.
    Day,
    Provider,
    Tenant,
}

impl GroupBy {
    /// The grouping expression over `usage_daily` and over `usage`.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            GroupBy::None => ("''", "''"),
            GroupBy::Model => ("model", "model"),
            GroupBy::Key => ("key_id", "key_id"),
            GroupBy::Day => ("day", "date(time_unix_ms / 1000, 'unixepoch')"),
            GroupBy::Provider => ("provider", "provider"),
            GroupBy::Tenant => ("tenant", "tenant"),
        }
    }
}

/// Which records a query covers. `None` filters match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    /// Inclusive, Unix ms.
    pub since_unix_ms: Option<i64>,
    /// Exclusive, Unix ms.
    pub until_unix_ms: Option<i64>,
    pub group_by: GroupBy,
}

/// The answer to a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records applied now.
    pub applied: u32,
    /// Records applied before (or twice in the batch).
    pub duplicates: u32,
}

/// What one compaction run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// The watermark after the run: days before it exist only as rollups.
    pub compacted_before_unix_ms: i64,
    /// Raw rows deleted (their ids kept in `usage_seen`).
    pub deleted: u64,
    /// Ids of compacted records forgotten (older than the dedup window).
    pub forgotten: u64,
}

fn int(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit the ledger")))
}

fn count(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative usage total {v}")))
}

const INSERT_INTO_USAGE: &str = "
    INSERT INTO usage (request_id, time_unix_ms, tenant, key_id, alias, provider, model,
        input_tokens, output_tokens, cached_input_tokens, cache_creation_tokens, reasoning_tokens,
        cost_nano_usd, latency_ms, ttft_ms, status, cache_hit, saved_nano_usd, policy_version,
        unpriced, stream, endpoint, failed, dataplane_id) VALUES";

/// Columns of a `usage` row, as bound by [`bind_record`].
const USAGE_COLUMNS: usize = 24;

/// Records inserted by one multi-row statement: one statement per row costs a fifth more.
const ROWS_PER_INSERT: usize = 32;

/// Inserts one record unless a record with its time and id is stored already.
fn insert_one_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| insert_sql(1, " ON CONFLICT DO NOTHING"))
}

/// Inserts [`ROWS_PER_INSERT`] records, or fails whole if any of them is stored already.
fn insert_many_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| insert_sql(ROWS_PER_INSERT, ""))
}

/// `INSERT` of `rows` rows, the row `r` bound at parameters `r * USAGE_COLUMNS + 1 ..`.
fn insert_sql(rows: usize, tail: &str) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let first = row * USAGE_COLUMNS + 1;
            let params: Vec<String> = (first..first + USAGE_COLUMNS).map(|i| format!("?{i}")).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!("{INSERT_INTO_USAGE} {}{tail}", values.join(", "))
}

/// Binds `r` as row `row` of an insert statement.
fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    row: usize,
    r: &UsageRecord,
    dataplane_id: &str,
) -> Result<(), StoreError> {
    let at = row * USAGE_COLUMNS;
    stmt.raw_bind_parameter(at + 1, &r.request_id)?;
    stmt.raw_bind_parameter(at + 2, r.time_unix_ms)?;
    stmt.raw_bind_parameter(at + 3, &r.tenant)?;
    stmt.raw_bind_parameter(at + 4, &r.key_id)?;
    stmt.raw_bind_parameter(at + 5, &r.alias)?;
    stmt.raw_bind_parameter(at + 6, &r.provider)?;
    stmt.raw_bind_parameter(at + 7, &r.model)?;
    stmt.raw_bind_parameter(at + 8, int(r.input_tokens)?)?;
    stmt.raw_bind_parameter(at + 9, int(r.output_tokens)?)?;
    stmt.raw_bind_parameter(at + 10, int(r.cached_input_tokens)?)?;
    stmt.raw_bind_parameter(at + 11, int(r.cache_creation_tokens)?)?;
    stmt.raw_bind_parameter(at + 12, int(r.reasoning_tokens)?)?;
    stmt.raw_bind_parameter(at + 13, r.cost_nano_usd)?;
    stmt.raw_bind_parameter(at + 14, r.latency_ms)?;
    stmt.raw_bind_parameter(at + 15, r.ttft_ms)?;
    stmt.raw_bind_parameter(at + 16, r.status)?;
    stmt.raw_bind_parameter(at + 17, r.cache_hit)?;
    stmt.raw_bind_parameter(at + 18, r.saved_nano_usd)?;
    stmt.raw_bind_parameter(at + 19, int(r.policy_version)?)?;
    stmt.raw_bind_parameter(at + 20, r.unpriced)?;
    stmt.raw_bind_parameter(at + 21, r.stream)?;
    stmt.raw_bind_parameter(at + 22, &r.endpoint)?;
    stmt.raw_bind_parameter(at + 23, r.failed)?;
    stmt.raw_bind_parameter(at + 24, dataplane_id)?;
    Ok(())
}

const SEEN: &str = "SELECT 1 FROM usage_seen WHERE request_id = ?1";

const UPSERT_DAILY: &str = "
    INSERT INTO usage_daily (day, tenant, key_id, provider, model, requests, input_tokens,
        output_tokens, cached_input_tokens, cost_nano_usd, cache_hits, saved_nano_usd, failed, unpriced)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
    ON CONFLICT (day, tenant, key_id, provider, model) DO UPDATE SET
        requests = requests + excluded.requests,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        cost_nano_usd = cost_nano_usd + excluded.cost_nano_usd,
        cache_hits = cache_hits + excluded.cache_hits,
        saved_nano_usd = saved_nano_usd + excluded.saved_nano_usd,
        failed = failed + excluded.failed,
        unpriced = unpriced + excluded.unpriced";

/// A usage batch waiting for the store thread, and where its answer goes.
pub(super) struct Pending {
    pub dataplane_id: String,
    pub records: Vec<UsageRecord>,
    pub reply: oneshot::Sender<Answer>,
}

/// The answer for a batch, with the batch itself: it is freed by the task that sent it, not on
/// the store thread, whose frees of memory from the request threads' allocator arenas would
/// contend with those threads.
pub(super) type Answer = (Result<Applied, StoreError>, Vec<UsageRecord>);

/// Records gathered into one group commit, at most (a group starts with one batch, whatever
/// its size).
pub(super) const GROUP_MAX_RECORDS: usize = 20_000;

type Rollups<'a> = HashMap<(UtcDay, &'a str, &'a str, &'a str, &'a str), UsageTotals>;

/// Applies queued batches in one transaction and answers each after the commit. If the
/// transaction fails, nothing of it is written and each batch is retried in a transaction of its
/// own, so every batch is applied whole or not at all and one batch's failure is never another's.
/// (Savepoints would isolate batches too, but their sub-journal copies every page a batch
/// touches; batches arrive validated, so a failure here is rare and the retry path is enough.)
///
/// The cost of what each committed transaction applied is told to `ledger` (the lease book)
/// after its commit and before any batch is answered (`store::ledger`).
pub(super) fn apply_group(
    conn: &mut Connection,
    group: Vec<Pending>,
    ledger: Option<&UnboundedSender<LedgerEvent>>,
) {
    let batches: Vec<(&str, &[UsageRecord])> = group
        .iter()
        .map(|p| (p.dataplane_id.as_str(), p.records.as_slice()))
        .collect();
    let results: Vec<Result<Applied, StoreError>> = match apply(conn, &batches, ledger) {
        Ok(applied) => applied.into_iter().map(Ok).collect(),
        Err(e) if batches.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::warn!(error = %e, batches = batches.len(), "usage group commit failed; applying batches one by one");
            batches
                .iter()
                .map(|batch| {
                    apply(conn, std::slice::from_ref(batch), ledger)?
                        .pop()
                        .ok_or_else(|| StoreError::Corrupt("no result for a usage batch".to_owned()))
                })
                .collect()
        }
    };
    for (pending, result) in group.into_iter().zip(results) {
        // The sender may have gone (e.g. its call was cancelled); the batch is applied anyway.
        let _ = pending.reply.send((result, pending.records));
    }
}

/// Applies batches of validated records in one transaction: new records are stored and added
/// to the rollups; records already applied (before, or earlier in these batches) are counted as
/// duplicates and change nothing. On error nothing is written.
fn apply(
    conn: &mut Connection,
    batches: &[(&str, &[UsageRecord])],
    ledger: Option<&UnboundedSender<LedgerEvent>>,
) -> Result<Vec<Applied>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let watermark = compacted_before(&tx)?;
    let mut rollups = Rollups::new();
    let applied = batches
        .iter()
        .map(|&(dataplane_id, records)| insert_records(&tx, watermark, dataplane_id, records, &mut rollups))
        .collect::<Result<Vec<_>, _>>()?;
    upsert_rollups(&tx, &rollups)?;
    super::keys::touch(&tx, &last_used(batches))?;
    tx.commit()?;
    if ledger.is_some() {
        super::ledger::tell(ledger, spend_deltas(&rollups));
    }
    Ok(applied)
}

/// The cost of the records just applied, per (tenant, key, day), zero costs left out.
fn spend_deltas(rollups: &Rollups<'_>) -> Vec<SpendDelta> {
    let mut by_day: HashMap<(&str, &str, UtcDay), i64> = HashMap::new();
    for ((day, tenant, key_id, _, _), totals) in rollups {
        let cost = by_day.entry((tenant, key_id, *day)).or_default();
        *cost = cost.saturating_add(totals.cost_nano_usd);
    }
    by_day
        .into_iter()
        .filter(|(_, cost)| *cost != 0)
        .map(|((tenant, key_id, day), cost_nano_usd)| SpendDelta {
            tenant: tenant.to_owned(),
            key_id: key_id.to_owned(),
            time_unix_ms: day.start_unix_ms(),
            cost_nano_usd,
        })
        .collect()
}

/// When each key in `batches` was last used: "last used" of `drover key list` comes from here,
/// a write per key and batch, never per request.
fn last_used(batches: &[(&str, &[UsageRecord])]) -> Vec<(String, i64)> {
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for r in batches.iter().flat_map(|(_, records)| records.iter()) {
        if !r.key_id.is_empty() {
            let at = latest.entry(r.key_id.as_str()).or_insert(r.time_unix_ms);
            *at = (*at).max(r.time_unix_ms);
        }
    }
    latest.into_iter().map(|(k, at)| (k.to_owned(), at)).collect()
}

/// Inserts the records not applied before; adds those to `rollups`. Only a record from before
/// the compaction `watermark` can be among the compacted ids of `usage_seen` (a record's time
/// never changes), so only such a record is looked up there.
///
/// Records go in [`ROWS_PER_INSERT`] at a time in one statement that fails whole (and changes
/// nothing) if any of them is stored already; such a group, and the tail, go in one by one,
/// skipping the duplicates. A first send is all new, so the one-by-one path is for resends.
fn insert_records<'a>(
    conn: &Connection,
    watermark: i64,
    dataplane_id: &str,
    records: &'a [UsageRecord],
    rollups: &mut Rollups<'a>,
) -> Result<Applied, StoreError> {
    let mut answer = Applied::default();
    let mut many = conn.prepare_cached(insert_many_sql())?;
    let mut one = conn.prepare_cached(insert_one_sql())?;
    let mut seen = conn.prepare_cached(SEEN)?;
    for group in records.chunks(ROWS_PER_INSERT) {
        // The ledger works in small slices: a thread of the request path waiting for this
        // core gets it between two groups, not after the whole batch.
        std::thread::yield_now();
        if group.len() == ROWS_PER_INSERT && group.iter().all(|r| r.time_unix_ms >= watermark) {
            for (row, r) in group.iter().enumerate() {
                bind_record(&mut many, row, r, dataplane_id)?;
            }
            match many.raw_execute() {
                Ok(_) => {
                    for r in group {
                        answer.applied += 1;
                        add_to_rollups(rollups, r)?;
                    }
                    continue;
                }
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation => {}
                Err(e) => return Err(e.into()),
            }
        }
        for r in group {
            if r.time_unix_ms < watermark && seen.exists([&r.request_id])? {
                answer.duplicates += 1;
                continue;
            }
            bind_record(&mut one, 0, r, dataplane_id)?;
            if one.raw_execute()? == 0 {
                answer.duplicates += 1;
                continue;
            }
            answer.applied += 1;
            add_to_rollups(rollups, r)?;
        }
    }
    Ok(answer)
}

fn add_to_rollups<'a>(rollups: &mut Rollups<'a>, r: &'a UsageRecord) -> Result<(), StoreError> {
    let key = (
        UtcDay::of_unix_ms(r.time_unix_ms),
        r.tenant.as_str(),
        r.key_id.as_str(),
        r.provider.as_str(),
        r.model.as_str(),
    );
    rollups.entry(key).or_default().add(&UsageTotals::of(r))
}

fn upsert_rollups(conn: &Connection, rollups: &Rollups<'_>) -> Result<(), StoreError> {
    let mut upsert = conn.prepare_cached(UPSERT_DAILY)?;
    for ((day, tenant, key_id, provider, model), t) in rollups {
        upsert.execute(params![
            day.to_string(),
            tenant,
            key_id,
            provider,
            model,
            int(t.requests)?,
            int(t.input_tokens)?,
            int(t.output_tokens)?,
            int(t.cached_input_tokens)?,
            t.cost_nano_usd,
            int(t.cache_hits)?,
            t.saved_nano_usd,
            int(t.failed)?,
            int(t.unpriced)?,
        ])?;
    }
    Ok(())
}

/// The compaction watermark: days before it exist only as rollups.
fn compacted_before(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT compacted_before_unix_ms FROM usage_state WHERE id = 1",
        [],
        |row| row.get(0),
    )?)
}

/// Totals of the records `filter` covers, by group, sorted by group.
pub(super) fn query(
    conn: &Connection,
    filter: &UsageFilter,
) -> Result<BTreeMap<String, UsageTotals>, StoreError> {
    let since = filter.since_unix_ms.unwrap_or(0).max(0);
    let until = filter
        .until_unix_ms
        .unwrap_or(MAX_USAGE_TIME_UNIX_MS)
        .min(MAX_USAGE_TIME_UNIX_MS);
    let mut groups = BTreeMap::new();
    if since >= until {
        return Ok(groups);
    }
    let watermark = compacted_before(conn)?;
    // Whole days inside the range, plus the day `until` falls in if it is compacted (its
    // midnight is inside the range): [first_day, end_day), read from the rollups.
    let first_day = UtcDay::of_unix_ms(since + MS_PER_DAY - 1);
    let until_day = UtcDay::of_unix_ms(until);
    let until_day_compacted = until_day.start_unix_ms() < watermark;
    let end_day = if until % MS_PER_DAY != 0 && until_day_compacted {
        UtcDay(until_day.0 + 1)
    } else {
        until_day
    };
    // The rest, to the millisecond, from the raw rows of uncompacted days.
    let mut raw = Vec::with_capacity(2);
    if first_day < end_day {
        let (lo, hi) = (first_day.start_unix_ms(), end_day.start_unix_ms());
        raw.push((since.max(watermark), until.min(lo)));
        raw.push((since.max(watermark).max(hi), until));
        query_daily(conn, filter, first_day, UtcDay(end_day.0 - 1), &mut groups)?;
    } else {
        raw.push((since.max(watermark), until));
    }
    for (from, to) in raw {
        if from < to {
            query_raw(conn, filter, from, to, &mut groups)?;
        }
    }
    Ok(groups)
}

const SUMS_DAILY: &str = "SUM(requests), SUM(input_tokens), SUM(output_tokens), SUM(cached_input_tokens), \
     SUM(cost_nano_usd), SUM(cache_hits), SUM(saved_nano_usd), SUM(failed), SUM(unpriced)";
const SUMS_RAW: &str = "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_input_tokens), \
     SUM(cost_nano_usd), SUM(cache_hit), SUM(saved_nano_usd), SUM(failed), SUM(unpriced)";
const FILTERS: &str =
    "(?3 IS NULL OR tenant = ?3) AND (?4 IS NULL OR key_id = ?4) AND (?5 IS NULL OR model = ?5)";

/// Rollups of the days `first..=last`.
fn query_daily(
    conn: &Connection,
    filter: &UsageFilter,
    first: UtcDay,
    last: UtcDay,
    groups: &mut BTreeMap<String, UsageTotals>,
) -> Result<(), StoreError> {
    let (group, _) = filter.group_by.columns();
    let sql = format!(
        "SELECT {group}, {SUMS_DAILY} FROM usage_daily WHERE day >= ?1 AND day <= ?2 AND {FILTERS} GROUP BY 1"
    );
    let params = params![
        first.to_string(),
        last.to_string(),
        filter.tenant,
        filter.key_id,
        filter.model
    ];
    collect(conn, &sql, params, groups)
}

/// Raw rows with `from <= time < to`.
fn query_raw(
    conn: &Connection,
    filter: &UsageFilter,
    from: i64,
    to: i64,
    groups: &mut BTreeMap<String, UsageTotals>,
) -> Result<(), StoreError> {
    let (_, group) = filter.group_by.columns();
    let sql = format!(
        "SELECT {group}, {SUMS_RAW} FROM usage WHERE time_unix_ms >= ?1 AND time_unix_ms < ?2 AND {FILTERS} \
         GROUP BY 1"
    );
    collect(
        conn,
        &sql,
        params![from, to, filter.tenant, filter.key_id, filter.model],
        groups,
    )
}

fn collect(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    groups: &mut BTreeMap<String, UsageTotals>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    while let Some(row) = rows.next()? {
        let group: String = row.get(0)?;
        let totals = UsageTotals {
            requests: count(row.get(1)?)?,
            input_tokens: count(row.get(2)?)?,
            output_tokens: count(row.get(3)?)?,
            cached_input_tokens: count(row.get(4)?)?,
            cost_nano_usd: row.get(5)?,
            cache_hits: count(row.get(6)?)?,
            saved_nano_usd: row.get(7)?,
            failed: count(row.get(8)?)?,
            unpriced: count(row.get(9)?)?,
        };
        groups.entry(group).or_default().add(&totals)?;
    }
    Ok(())
}

/// Moves the watermark forward to `before_unix_ms` (a UTC midnight); never back.
fn advance(conn: &mut Connection, before_unix_ms: i64) -> Result<i64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let watermark: i64 = tx.query_row(
        "UPDATE usage_state SET compacted_before_unix_ms = max(compacted_before_unix_ms, ?1) WHERE id = 1
         RETURNING compacted_before_unix_ms",
        [before_unix_ms],
        |row| row.get(0),
    )?;
    tx.commit()?;
    Ok(watermark)
}

/// Deletes up to `limit` raw rows from before the watermark, keeping their ids in
/// `usage_seen`, in one transaction. Returns how many were deleted.
fn compact_batch(conn: &mut Connection, now_unix_ms: i64, limit: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let watermark = compacted_before(&tx)?;
    let deleted: Vec<(String, i64)> = {
        let mut stmt = tx.prepare_cached(
            "DELETE FROM usage WHERE (time_unix_ms, request_id) IN
                 (SELECT time_unix_ms, request_id FROM usage WHERE time_unix_ms < ?1
                  ORDER BY time_unix_ms LIMIT ?2)
             RETURNING request_id, time_unix_ms",
        )?;
        let rows = stmt.query_map(params![watermark, int(limit as u64)?], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    {
        let mut seen = tx.prepare_cached(
            "INSERT INTO usage_seen (request_id, time_unix_ms, compacted_unix_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (request_id) DO NOTHING",
        )?;
        for (request_id, time) in &deleted {
            seen.execute(params![request_id, time, now_unix_ms])?;
        }
    }
    tx.commit()?;
    Ok(deleted.len())
}

/// Forgets up to `limit` ids of records compacted before `before_unix_ms`.
fn forget_batch(conn: &mut Connection, before_unix_ms: i64, limit: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = tx.execute(
        "DELETE FROM usage_seen WHERE request_id IN
             (SELECT request_id FROM usage_seen WHERE compacted_unix_ms < ?1 LIMIT ?2)",
        params![before_unix_ms, int(limit as u64)?],
    )?;
    tx.commit()?;
    Ok(n)
}

/// The watermark for `retention` at `now`: the UTC midnight at or before `now - retention`.
pub fn watermark_for(now_unix_ms: i64, retention: Duration) -> i64 {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    UtcDay::of_unix_ms(now_unix_ms.saturating_sub(retention_ms)).start_unix_ms()
}

impl Store {
    /// Applies a batch of validated records exactly once (see the module doc).
    pub async fn report_usage(
        &self,
        dataplane_id: String,
        records: Vec<UsageRecord>,
    ) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            dataplane_id,
            records,
            reply,
        };
        self.tx
            .send(super::Msg::Usage(pending))
            .await
            .map_err(|_| StoreError::Closed)?;
        let (applied, records) = answer.await.map_err(|_| StoreError::Closed)?;
        drop(records);
        applied
    }

    /// Totals of the records `filter` covers, by group, sorted by group.
    pub async fn query_usage(
        &self,
        filter: UsageFilter,
    ) -> Result<BTreeMap<String, UsageTotals>, StoreError> {
        self.call(move |db| query(&db.conn, &filter)).await
    }

    /// One retention pass at `now`: with a retention, compacts the raw records of the days
    /// before `watermark_for(now, retention)`, one small transaction at a time; either way,
    /// forgets the ids of records compacted more than [`DEDUP_WINDOW`] ago.
    pub async fn compact_usage(
        &self,
        retention: Option<Duration>,
        now_unix_ms: i64,
    ) -> Result<Compaction, StoreError> {
        let mut report = Compaction::default();
        if let Some(retention) = retention {
            let before = watermark_for(now_unix_ms, retention);
            report.compacted_before_unix_ms = self.call(move |db| advance(&mut db.conn, before)).await?;
            loop {
                let n = self
                    .call(move |db| compact_batch(&mut db.conn, now_unix_ms, COMPACTION_BATCH))
                    .await?;
                report.deleted += n as u64;
                if n < COMPACTION_BATCH {
                    break;
                }
            }
        } else {
            report.compacted_before_unix_ms = self.call(|db| compacted_before(&db.conn)).await?;
        }
        let window = i64::try_from(DEDUP_WINDOW.as_millis()).unwrap_or(i64::MAX);
        let forget_before = now_unix_ms.saturating_sub(window);
        loop {
            let n = self
                .call(move |db| forget_batch(&mut db.conn, forget_before, COMPACTION_BATCH))
                .await?;
            report.forgotten += n as u64;
            if n < COMPACTION_BATCH {
                break;
            }
        }
        Ok(report)
    }

    /// Row counts of the ledger tables, for tests and diagnostics: (raw, daily, seen).
    #[cfg(test)]
    pub async fn usage_row_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        self.call(|db| {
            let n = |table: &str| -> Result<u64, StoreError> {
                let v: i64 = db
                    .conn
                    .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
                count(v)
            };
            Ok((n("usage")?, n("usage_daily")?, n("usage_seen")?))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _};

    use super::*;
    use crate::store::crypto::MasterKey;

    const DAY: i64 = MS_PER_DAY;
    /// 2026-11-01T00:00Z.
    const NOV_1: i64 = 1_793_491_200_000;

    fn key() -> MasterKey {
        MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    async fn open(dir: &tempfile::TempDir) -> (Store, crate::store::StoreThread) {
        Store::open(&dir.path().join("d.db"), key()).await.unwrap()
    }

    fn record(id: &str, time_unix_ms: i64) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            time_unix_ms,
            tenant: "acme".into(),
            key_id: "k1".into(),
            alias: "fast".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input_tokens: 100,
            output_tokens: 20,
            cached_input_tokens: 10,
            cost_nano_usd: 27_750,
            status: 200,
            ..Default::default()
        }
    }

    /// Records spread over days, tenants, keys, providers and models, with awkward values.
    fn random_records(rng: &mut StdRng, n: usize, prefix: &str) -> Vec<UsageRecord> {
        (0..n)
            .map(|i| {
                let mut r = record(
                    &format!("{prefix}-{i}"),
                    NOV_1 + rng.random_range(-3 * DAY..6 * DAY),
                );
                r.tenant = ["", "acme", "globex"][rng.random_range(0..3)].into();
                r.key_id = ["", "k1", "k2", "k3"][rng.random_range(0..4)].into();
                r.provider = ["openai", "anthropic"][rng.random_range(0..2)].into();
                r.model = ["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"][rng.random_range(0..3)].into();
                r.input_tokens = rng.random_range(0..100_000);
                r.output_tokens = rng.random_range(0..10_000);
                r.cached_input_tokens = rng.random_range(0..=r.input_tokens);
                r.cost_nano_usd = rng.random_range(0..1_000_000_000);
                r.cache_hit = rng.random_bool(0.2);
                r.saved_nano_usd = if r.cache_hit {
                    rng.random_range(0..5_000_000)
                } else {
                    0
                };
                r.failed = rng.random_bool(0.1);
                r.unpriced = rng.random_bool(0.05);
                r
            })
            .collect()
    }

    /// What a query must answer, computed from the records themselves: a record counts when it
    /// matches the filters and its time is in range, or, for a day compacted before
    /// `watermark`, when its day's midnight is in range.
    fn expected(records: &[UsageRecord], f: &UsageFilter, watermark: i64) -> BTreeMap<String, UsageTotals> {
        let since = f.since_unix_ms.unwrap_or(0);
        let until = f.until_unix_ms.unwrap_or(MAX_USAGE_TIME_UNIX_MS);
        let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
        for r in records {
            let day = UtcDay::of_unix_ms(r.time_unix_ms);
            let at = if day.start_unix_ms() < watermark {
                day.start_unix_ms()
            } else {
                r.time_unix_ms
            };
            let matches = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
            if !(since..until).contains(&at)
                || !matches(&f.tenant, &r.tenant)
                || !matches(&f.key_id, &r.key_id)
                || !matches(&f.model, &r.model)
            {
                continue;
            }
            let group = match f.group_by {
                GroupBy::None => String::new(),
                GroupBy::Model => r.model.clone(),
                GroupBy::Key => r.key_id.clone(),
                GroupBy::Day => day.to_string(),
                GroupBy::Provider => r.provider.clone(),
                GroupBy::Tenant => r.tenant.clone(),
            };
            groups.entry(group).or_default().add(&UsageTotals::of(r)).unwrap();
        }
        groups
    }

    fn filter(group_by: GroupBy) -> UsageFilter {
        UsageFilter {
            tenant: None,
            key_id: None,
            model: None,
            since_unix_ms: None,
            until_unix_ms: None,
            group_by,
        }
    }

    const GROUPINGS: [GroupBy; 6] = [
        GroupBy::None,
        GroupBy::Model,
        GroupBy::Key,
        GroupBy::Day,
        GroupBy::Provider,
        GroupBy::Tenant,
    ];

    /// Filters and ranges: none, aligned to days, to the millisecond, inside one day, empty.
    fn filters(rng: &mut StdRng) -> Vec<UsageFilter> {
        let mut out = Vec::new();
        for group_by in GROUPINGS {
            out.push(filter(group_by));
            out.push(UsageFilter {
                tenant: Some("acme".into()),
                ..filter(group_by)
            });
            out.push(UsageFilter {
                key_id: Some("k2".into()),
                model: Some("gpt-4o".into()),
                ..filter(group_by)
            });
            out.push(UsageFilter {
                since_unix_ms: Some(NOV_1),
                until_unix_ms: Some(NOV_1 + 2 * DAY),
                ..filter(group_by)
            });
            out.push(UsageFilter {
                tenant: Some(String::new()),
                until_unix_ms: Some(NOV_1 + 1),
                ..filter(group_by)
            });
            for _ in 0..12 {
                let a = NOV_1 + rng.random_range(-4 * DAY..7 * DAY);
                let b = a + rng.random_range(1..4 * DAY);
                out.push(UsageFilter {
                    since_unix_ms: Some(a),
                    until_unix_ms: Some(b),
                    ..filter(group_by)
                });
            }
        }
        out
    }

    async fn check_queries(store: &Store, records: &[UsageRecord], watermark: i64, rng: &mut StdRng) {
        for f in filters(rng) {
            let got = store.query_usage(f.clone()).await.unwrap();
            assert_eq!(got, expected(records, &f, watermark), "{f:?}");
        }
    }

    #[tokio::test]
    async fn a_batch_applies_once_and_a_resend_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let batch = vec![record("a", NOV_1), record("b", NOV_1 + 5), record("a", NOV_1)];
        let first = store.report_usage("dp".into(), batch.clone()).await.unwrap();
        assert_eq!(
            first,
            Applied {
                applied: 2,
                duplicates: 1
            },
            "a record twice in a batch counts once"
        );
        let totals = store.query_usage(filter(GroupBy::None)).await.unwrap();
        assert_eq!(totals[""].requests, 2);
        assert_eq!(totals[""].cost_nano_usd, 2 * 27_750);

        let again = store.report_usage("dp".into(), batch).await.unwrap();
        assert_eq!(
            again,
            Applied {
                applied: 0,
                duplicates: 3
            }
        );
        assert_eq!(store.query_usage(filter(GroupBy::None)).await.unwrap(), totals);
        assert_eq!(store.usage_row_counts().await.unwrap(), (2, 1, 0));
        thread.close().await.unwrap();

        // The ledger survives a restart, and so does its memory of what it applied.
        let (store, thread) = open(&dir).await;
        let mixed = vec![record("b", NOV_1 + 5), record("c", NOV_1)];
        let answer = store.report_usage("dp".into(), mixed).await.unwrap();
        assert_eq!(
            answer,
            Applied {
                applied: 1,
                duplicates: 1
            }
        );
        assert_eq!(
            store.query_usage(filter(GroupBy::None)).await.unwrap()[""].requests,
            3
        );
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn large_batches_with_some_records_already_applied_count_each_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let records: Vec<UsageRecord> = (0..200).map(|i| record(&format!("r{i:03}"), NOV_1 + i)).collect();
        // Every tenth record first, then everything: groups of new records with old ones among them.
        let some: Vec<UsageRecord> = records.iter().step_by(10).cloned().collect();
        let first = store.report_usage("dp".into(), some).await.unwrap();
        assert_eq!((first.applied, first.duplicates), (20, 0));
        let mut all = records.clone();
        all.extend(records[150..].iter().cloned()); // and the last fifty twice in the batch
        let second = store.report_usage("dp".into(), all).await.unwrap();
        assert_eq!((second.applied, second.duplicates), (180, 70));
        let totals = store.query_usage(filter(GroupBy::None)).await.unwrap();
        assert_eq!(totals[""].requests, 200);
        assert_eq!(totals[""].cost_nano_usd, 200 * 27_750);
        assert_eq!(store.usage_row_counts().await.unwrap().0, 200);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn queued_batches_share_a_commit_but_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        // Hold the store thread until every batch is queued, so they form one group.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let blocker = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .call(move |_| {
                        let _ = started.send(());
                        let _ = wait.recv();
                        Ok(())
                    })
                    .await
            })
        };
        running.await.unwrap();
        let mut batches: Vec<Vec<UsageRecord>> = (0..6)
            .map(|b| (0..50).map(|i| record(&format!("g{b}-{i}"), NOV_1 + i)).collect())
            .collect();
        // Batch 3 cannot be stored past its 10th record (the value does not fit the ledger);
        // batch 4 repeats ids of batch 1.
        batches[3][10].input_tokens = u64::MAX;
        batches[4] = batches[1][..20].to_vec();
        let queued = super::super::QUEUE - batches.len();
        let tasks: Vec<_> = batches
            .iter()
            .cloned()
            .map(|records| {
                let store = store.clone();
                tokio::spawn(async move { store.report_usage("dp".into(), records).await })
            })
            .collect();
        while store.tx.capacity() > queued {
            tokio::task::yield_now().await;
        }
        go.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        for (i, answer) in answers.iter().enumerate() {
            match i {
                3 => assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}"),
                4 => assert_eq!(
                    answer.as_ref().unwrap(),
                    &Applied {
                        applied: 0,
                        duplicates: 20
                    }
                ),
                _ => assert_eq!(
                    answer.as_ref().unwrap(),
                    &Applied {
                        applied: 50,
                        duplicates: 0
                    }
                ),
            }
        }
        let total = store.query_usage(filter(GroupBy::None)).await.unwrap()[""];
        assert_eq!(total.requests, 4 * 50, "batch 3 left nothing behind");
        assert_eq!(store.usage_row_counts().await.unwrap().0, 200);
        // Batch 3, fixed, is applied whole later.
        batches[3][10].input_tokens = 1;
        let answer = store.report_usage("dp".into(), batches[3].clone()).await.unwrap();
        assert_eq!(
            answer,
            Applied {
                applied: 50,
                duplicates: 0
            }
        );
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_ledger_is_written_with_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let (sync, journal): (i64, String) = store
            .call(|db| {
                Ok((
                    db.conn.pragma_query_value(None, "synchronous", |r| r.get(0))?,
                    db.conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!((sync, journal.as_str()), (2, "wal"), "synchronous=FULL is 2");
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn rollups_and_raw_rows_answer_every_grouping_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let mut rng = StdRng::seed_from_u64(7);
        let records = random_records(&mut rng, 3_000, "r");
        for chunk in records.chunks(700) {
            store.report_usage("dp".into(), chunk.to_vec()).await.unwrap();
        }
        check_queries(&store, &records, 0, &mut rng).await;

        // Grouped totals add up to the ungrouped total, for every grouping.
        let total = store.query_usage(filter(GroupBy::None)).await.unwrap()[""];
        for group_by in GROUPINGS {
            let mut sum = UsageTotals::default();
            for t in store.query_usage(filter(group_by)).await.unwrap().values() {
                sum.add(t).unwrap();
            }
            assert_eq!(sum, total, "{group_by:?}");
        }
        // Ranges are additive: [a, m) + [m, b) = [a, b).
        for _ in 0..50 {
            let a = NOV_1 + rng.random_range(-4 * DAY..2 * DAY);
            let m = a + rng.random_range(1..3 * DAY);
            let b = m + rng.random_range(1..3 * DAY);
            let range = |since, until| UsageFilter {
                since_unix_ms: Some(since),
                until_unix_ms: Some(until),
                ..filter(GroupBy::None)
            };
            let part = |f| {
                let store = store.clone();
                async move { store.query_usage(f).await.unwrap().remove("").unwrap_or_default() }
            };
            let mut sum = part(range(a, m)).await;
            sum.add(&part(range(m, b)).await).unwrap();
            assert_eq!(sum, part(range(a, b)).await);
        }
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn compaction_keeps_totals_deletes_raw_rows_and_remembers_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let mut rng = StdRng::seed_from_u64(11);
        let records = random_records(&mut rng, 12_000, "c");
        for chunk in records.chunks(2_000) {
            store.report_usage("dp".into(), chunk.to_vec()).await.unwrap();
        }
        let aligned: Vec<UsageFilter> = GROUPINGS
            .into_iter()
            .flat_map(|g| {
                [
                    filter(g),
                    UsageFilter {
                        since_unix_ms: Some(NOV_1 - 2 * DAY),
                        until_unix_ms: Some(NOV_1 + 3 * DAY),
                        tenant: Some("globex".into()),
                        ..filter(g)
                    },
                ]
            })
            .collect();
        let mut before = Vec::new();
        for f in &aligned {
            before.push(store.query_usage(f.clone()).await.unwrap());
        }

        // Now is Nov 4, 15:00 with a 2-day retention: days before Nov 2 are compacted.
        let now = NOV_1 + 3 * DAY + 15 * 3_600_000;
        let retention = Some(Duration::from_secs(2 * 24 * 3600));
        let watermark = NOV_1 + DAY;
        let old = records.iter().filter(|r| r.time_unix_ms < watermark).count() as u64;
        assert!(
            old > COMPACTION_BATCH as u64,
            "more than one compaction batch: {old}"
        );
        let done = store.compact_usage(retention, now).await.unwrap();
        assert_eq!(
            done,
            Compaction {
                compacted_before_unix_ms: watermark,
                deleted: old,
                forgotten: 0
            }
        );
        let (raw, _, seen) = store.usage_row_counts().await.unwrap();
        assert_eq!((raw, seen), (records.len() as u64 - old, old));

        for (f, want) in aligned.iter().zip(&before) {
            assert_eq!(&store.query_usage(f.clone()).await.unwrap(), want, "{f:?}");
        }
        check_queries(&store, &records, watermark, &mut rng).await;

        // A resend of compacted and of live records is all duplicates.
        let resend: Vec<UsageRecord> = records.iter().step_by(7).cloned().collect();
        let answer = store.report_usage("dp".into(), resend.clone()).await.unwrap();
        assert_eq!((answer.applied, answer.duplicates as usize), (0, resend.len()));
        assert_eq!(store.query_usage(aligned[0].clone()).await.unwrap(), before[0]);

        // A late record for a compacted day lands in its rollup and is compacted next time.
        let late = record("late", NOV_1 - 2 * DAY + 5);
        store.report_usage("dp".into(), vec![late.clone()]).await.unwrap();
        let mut all = records.clone();
        all.push(late);
        check_queries(&store, &all, watermark, &mut rng).await;
        let again = store.compact_usage(retention, now).await.unwrap();
        assert_eq!(again.deleted, 1);
        check_queries(&store, &all, watermark, &mut rng).await;

        // The watermark never moves back; ids are forgotten after the dedup window.
        let window = i64::try_from(DEDUP_WINDOW.as_millis()).unwrap();
        let later = store
            .compact_usage(Some(Duration::from_secs(3600 * 24 * 365)), now + window + 1)
            .await
            .unwrap();
        assert_eq!(later.compacted_before_unix_ms, watermark);
        assert_eq!(later.forgotten, old + 1);
        assert_eq!(store.usage_row_counts().await.unwrap().2, 0);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn without_retention_nothing_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        store
            .report_usage("dp".into(), vec![record("x", 5)])
            .await
            .unwrap();
        let done = store.compact_usage(None, NOV_1).await.unwrap();
        assert_eq!(done, Compaction::default());
        assert_eq!(store.usage_row_counts().await.unwrap(), (1, 1, 0));
        thread.close().await.unwrap();
    }

    #[test]
    fn watermarks_are_utc_midnights() {
        let retention = Duration::from_secs(30 * 24 * 3600);
        let now = NOV_1 + 24 * DAY + 11 * 3_600_000;
        assert_eq!(watermark_for(now, retention), NOV_1 - 6 * DAY);
        assert_eq!(watermark_for(NOV_1, Duration::ZERO), NOV_1);
        assert_eq!(watermark_for(0, retention), -30 * DAY);
    }
}
