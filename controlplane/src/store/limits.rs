//! Rate limits and spend caps of tenants and keys, as stored, and as the lease book needs them.
//!
//! The `limits` table holds at most one row per tenant or key (each kind nullable: no limit of
//! that kind), `caps` at most one row per tenant or key and period (migration 8). A change of
//! either sets the owner's `rev` in the transaction that makes it, so the policy stream sends the
//! tenant or key again with what it now has (`tenants::changed_since`, `keys::changed_since`).
//! Deleting a tenant deletes its and its keys' rows; revoking a key deletes its own.
//!
//! A cap's spend is the usage ledger's settled spend in the cap's current period, summed from the
//! daily rollups (`usage_daily`): a tenant's by its name (usage records carry names, so a tenant
//! created again under a name continues its predecessor's spend), a key's by its id.
//!
//! Validation is the admin API's; the store only checks that the tenant or key exists.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::{NonZeroU32, NonZeroU64};

use drover_proto::model::{
    Cap, CapPeriod, Limits, UtcDay, now_unix_ms, quoted, validate_cap_amount, validate_concurrency_limit,
    validate_rate_limit, validate_soft_at,
};
use drover_proto::pb;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension as _, Row, ToSql, params};

use super::page::{Page, PageToken};
use super::tenancy::Outcome;
use super::tenants::{self, id_sql};
use super::{Store, keys, meta};
use crate::error::StoreError;

/// The limits and caps of one tenant or key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeConfig {
    pub limits: Limits,
    pub caps: Vec<Cap>,
}

/// Every tenant and key that has a limit or a cap, at one policy version. Suspended tenants,
/// revoked keys and deleted tenants are not in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitConfig {
    pub version: u64,
    /// By tenant id: the tenant's name (usage records carry names) and its limits.
    pub tenants: HashMap<u64, (String, ScopeConfig)>,
    /// By key id: the key's tenant id and its limits.
    pub keys: HashMap<String, (u64, ScopeConfig)>,
}

/// Whose limits or caps, as the admin API names them: a tenant by name, a key by id. Also whose
/// spend, as the usage ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Tenant(String),
    Key(String),
}

/// Kinds of rate limit to remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitKinds {
    pub rpm: bool,
    pub tpm: bool,
    pub concurrency: bool,
}

impl LimitKinds {
    pub const ALL: LimitKinds = LimitKinds {
        rpm: true,
        tpm: true,
        concurrency: true,
    };
}

/// A scope resolved to the row that owns it: a live tenant, or a key that is not revoked.
#[derive(Debug, Clone)]
enum Owner {
    Tenant { id: u64, name: String },
    Key { id: String, tenant: String },
}

impl Owner {
    /// The owner `scope` names, or NOT_FOUND (a deleted tenant and a revoked key are gone).
    fn resolve(conn: &Connection, scope: &Scope) -> Result<Owner, StoreError> {
        match scope {
            Scope::Tenant(name) => {
                let row = tenants::get(conn, name)?;
                Ok(Owner::Tenant {
                    id: row.id,
                    name: row.name,
                })
            }
            Scope::Key(id) => {
                let row = keys::get(conn, id)?;
                if row.revoked_unix_ms != 0 {
                    return Err(StoreError::NotFoundWhy(format!(
                        "key {} not found: it is revoked",
                        quoted(id)
                    )));
                }
                Ok(Owner::Key {
                    id: row.id,
                    tenant: row.tenant,
                })
            }
        }
    }

    /// The column of `limits` and `caps` that points at the owner, and its value.
    fn column(&self) -> (&'static str, Value) {
        match self {
            Owner::Tenant { id, .. } => ("tenant_id", Value::Integer(id_sql(*id))),
            Owner::Key { id, .. } => ("key_id", Value::Text(id.clone())),
        }
    }

    fn set_rev(&self, conn: &Connection, rev: u64) -> Result<(), StoreError> {
        match self {
            Owner::Tenant { id, .. } => tenants::set_rev(conn, *id, rev),
            Owner::Key { id, .. } => keys::set_rev(conn, id, rev),
        }
    }

    fn tenant(&self) -> &str {
        match self {
            Owner::Tenant { name, .. } => name,
            Owner::Key { tenant, .. } => tenant,
        }
    }

    fn scope(&self) -> Scope {
        match self {
            Owner::Tenant { name, .. } => Scope::Tenant(name.clone()),
            Owner::Key { id, .. } => Scope::Key(id.clone()),
        }
    }
}

fn wire_scope(scope: Scope) -> pb::LimitScope {
    pb::LimitScope {
        scope: Some(match scope {
            Scope::Tenant(name) => pb::limit_scope::Scope::Tenant(name),
            Scope::Key(id) => pb::limit_scope::Scope::KeyId(id),
        }),
    }
}

fn corrupt(what: &str) -> impl Fn(drover_proto::model::InvalidPolicy) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

/// Limits from the columns `rpm, tpm, concurrency` starting at `at`.
fn read_limits(row: &Row<'_>, at: usize) -> Result<Limits, StoreError> {
    let rate = |i: usize, field: &str| -> Result<Option<NonZeroU64>, StoreError> {
        let v: Option<i64> = row.get(i)?;
        v.map(|v| {
            let v = u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{field} limit {v}")))?;
            validate_rate_limit(field, v).map_err(corrupt("stored limit"))
        })
        .transpose()
    };
    let concurrency: Option<i64> = row.get(at + 2)?;
    let concurrency = concurrency
        .map(|v| {
            let v = u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("concurrency limit {v}")))?;
            validate_concurrency_limit("concurrency", v).map_err(corrupt("stored limit"))
        })
        .transpose()?;
    Ok(Limits {
        rpm: rate(at, "rpm")?,
        tpm: rate(at + 1, "tpm")?,
        concurrency,
    })
}

/// A cap from the columns `period, limit_nano_usd, soft_at, allow_unpriced` starting at `at`.
fn read_cap(row: &Row<'_>, at: usize) -> Result<Cap, StoreError> {
    let period: String = row.get(at)?;
    let limit_nano_usd: i64 = row.get(at + 1)?;
    let soft_at: Option<f64> = row.get(at + 2)?;
    validate_cap_amount("cap", limit_nano_usd).map_err(corrupt("stored cap"))?;
    Ok(Cap {
        period: CapPeriod::parse(&period)
            .ok_or_else(|| StoreError::Corrupt(format!("cap period {period:?}")))?,
        limit_nano_usd,
        soft_at: match soft_at {
            Some(f) => validate_soft_at("soft_at", f).map_err(corrupt("stored cap"))?,
            None => None,
        },
        allow_unpriced: row.get(at + 3)?,
    })
}

fn sql_rate(v: Option<NonZeroU64>) -> Option<i64> {
    v.map(|v| i64::try_from(v.get()).unwrap_or(i64::MAX))
}

/// How the scopes of one kind (tenants or keys) are read: `limits l` and `caps c` joined to
/// their owner, with `t` the tenant (and `k` the key), and the two owner columns the maps keep.
struct Kind {
    from_limits: &'static str,
    from_caps: &'static str,
    owner_columns: &'static str,
}

const TENANTS: Kind = Kind {
    from_limits: "limits l JOIN tenants t ON t.id = l.tenant_id",
    from_caps: "caps c JOIN tenants t ON t.id = c.tenant_id",
    owner_columns: "t.id, t.name",
};

const KEYS: Kind = Kind {
    from_limits: "limits l JOIN keys k ON k.id = l.key_id JOIN tenants t ON t.id = k.tenant_id",
    from_caps: "caps c JOIN keys k ON k.id = c.key_id JOIN tenants t ON t.id = k.tenant_id",
    owner_columns: "k.id, k.tenant_id",
};

/// The limits and caps of the owners of one kind that `filter` (over `t` and `k`) selects, by
/// the owner's first column, with its second. Caps are in period order.
fn scopes<K: Hash + Eq, T>(
    conn: &Connection,
    kind: &Kind,
    filter: &str,
    args: &[&dyn ToSql],
    owner: impl Fn(&Row<'_>) -> Result<(K, T), StoreError>,
) -> Result<HashMap<K, (T, ScopeConfig)>, StoreError> {
    let mut out: HashMap<K, (T, ScopeConfig)> = HashMap::new();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {}, l.rpm, l.tpm, l.concurrency FROM {} WHERE {filter}",
        kind.owner_columns, kind.from_limits
    ))?;
    let mut rows = stmt.query(args)?;
    while let Some(row) = rows.next()? {
        let (k, t) = owner(row)?;
        let limits = read_limits(row, 2)?;
        out.entry(k)
            .or_insert_with(|| (t, ScopeConfig::default()))
            .1
            .limits = limits;
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {}, c.period, c.limit_nano_usd, c.soft_at, c.allow_unpriced FROM {} WHERE {filter}",
        kind.owner_columns, kind.from_caps
    ))?;
    let mut rows = stmt.query(args)?;
    while let Some(row) = rows.next()? {
        let (k, t) = owner(row)?;
        let cap = read_cap(row, 2)?;
        out.entry(k)
            .or_insert_with(|| (t, ScopeConfig::default()))
            .1
            .caps
            .push(cap);
    }
    for (_, config) in out.values_mut() {
        config.caps.sort_by_key(|c| c.period);
    }
    Ok(out)
}

fn tenant_id(row: &Row<'_>, at: usize) -> Result<u64, StoreError> {
    let id: i64 = row.get(at)?;
    u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("tenant id {id}")))
}

/// Tenants that `filter` (over `t`) selects and that have a limit or a cap: by id, with the
/// tenant's name.
pub(super) fn tenant_scopes(
    conn: &Connection,
    filter: &str,
    args: &[&dyn ToSql],
) -> Result<HashMap<u64, (String, ScopeConfig)>, StoreError> {
    scopes(conn, &TENANTS, filter, args, |row| {
        Ok((tenant_id(row, 0)?, row.get(1)?))
    })
}

/// Keys that `filter` (over `k` and its tenant `t`) selects and that have a limit or a cap: by
/// id, with the key's tenant id.
pub(super) fn key_scopes(
    conn: &Connection,
    filter: &str,
    args: &[&dyn ToSql],
) -> Result<HashMap<String, (u64, ScopeConfig)>, StoreError> {
    scopes(conn, &KEYS, filter, args, |row| {
        Ok((row.get(0)?, tenant_id(row, 1)?))
    })
}

fn limits_of(conn: &Connection, owner: &Owner) -> Result<Limits, StoreError> {
    let (column, id) = owner.column();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT rpm, tpm, concurrency FROM limits WHERE {column} = ?1"
    ))?;
    let limits = stmt.query_row([id], |row| Ok(read_limits(row, 0))).optional()?;
    Ok(limits.transpose()?.unwrap_or_default())
}

fn write_limits(conn: &Connection, owner: &Owner, limits: &Limits) -> Result<(), StoreError> {
    let (column, id) = owner.column();
    conn.prepare_cached(&format!("DELETE FROM limits WHERE {column} = ?1"))?
        .execute([&id])?;
    if !limits.is_empty() {
        conn.prepare_cached(&format!(
            "INSERT INTO limits ({column}, rpm, tpm, concurrency) VALUES (?1, ?2, ?3, ?4)"
        ))?
        .execute(params![
            id,
            sql_rate(limits.rpm),
            sql_rate(limits.tpm),
            limits.concurrency.map(NonZeroU32::get)
        ])?;
    }
    Ok(())
}

fn caps_of(conn: &Connection, owner: &Owner) -> Result<Vec<Cap>, StoreError> {
    let (column, id) = owner.column();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT period, limit_nano_usd, soft_at, allow_unpriced FROM caps WHERE {column} = ?1"
    ))?;
    let mut caps = stmt
        .query_map([id], |row| Ok(read_cap(row, 0)))?
        .collect::<Result<Result<Vec<_>, _>, _>>()??;
    caps.sort_by_key(|c| c.period);
    Ok(caps)
}

/// Deletes the owner's cap of `period`, or all its caps. Returns how many were deleted.
fn delete_caps(conn: &Connection, owner: &Owner, period: Option<CapPeriod>) -> Result<usize, StoreError> {
    let (column, id) = owner.column();
    let mut stmt = conn.prepare_cached(&format!(
        "DELETE FROM caps WHERE {column} = ?1 AND (?2 IS NULL OR period = ?2)"
    ))?;
    Ok(stmt.execute(params![id, period.map(CapPeriod::as_str)])?)
}

fn put_cap(conn: &Connection, owner: &Owner, cap: &Cap) -> Result<(), StoreError> {
    delete_caps(conn, owner, Some(cap.period))?;
    let (column, id) = owner.column();
    conn.prepare_cached(&format!(
        "INSERT INTO caps ({column}, period, limit_nano_usd, soft_at, allow_unpriced)
         VALUES (?1, ?2, ?3, ?4, ?5)"
    ))?
    .execute(params![
        id,
        cap.period.as_str(),
        cap.limit_nano_usd,
        cap.soft_at,
        cap.allow_unpriced
    ])?;
    Ok(())
}

/// Deletes the limits and caps of a tenant and of its keys (the tenant is being deleted).
pub(super) fn drop_tenant(conn: &Connection, tenant_id: u64) -> Result<(), StoreError> {
    for table in ["limits", "caps"] {
        conn.prepare_cached(&format!(
            "DELETE FROM {table} WHERE tenant_id = ?1
             OR key_id IN (SELECT id FROM keys WHERE tenant_id = ?1)"
        ))?
        .execute([id_sql(tenant_id)])?;
    }
    Ok(())
}

/// Deletes the limits and caps of a key (it is being revoked).
pub(super) fn drop_key(conn: &Connection, key_id: &str) -> Result<(), StoreError> {
    for table in ["limits", "caps"] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE key_id = ?1"))?
            .execute([key_id])?;
    }
    Ok(())
}

/// The settled spend of `scope` in the period of `period` that contains `now_unix_ms`,
/// nano-USD, from the daily rollups (cap periods are whole UTC days).
pub(super) fn spent(
    conn: &Connection,
    scope: &Scope,
    period: CapPeriod,
    now_unix_ms: i64,
) -> Result<i64, StoreError> {
    let (start, end) = period.bounds(now_unix_ms);
    let first = UtcDay::of_unix_ms(start).to_string();
    // Usage times end before the year 10000, so a total cap's days end with 9999-12-31.
    let last = end.map_or_else(
        || "9999-12-31".to_owned(),
        |end| UtcDay(UtcDay::of_unix_ms(end).0 - 1).to_string(),
    );
    let (column, value) = match scope {
        Scope::Tenant(name) => ("tenant", name),
        Scope::Key(id) => ("key_id", id),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM usage_daily
         WHERE {column} = ?1 AND day >= ?2 AND day <= ?3"
    ))?;
    Ok(stmt.query_row(params![value, first, last], |row| row.get(0))?)
}

fn limit_info(scope: Scope, tenant: &str, limits: &Limits) -> pb::LimitInfo {
    let wire = Option::<pb::Limits>::from(limits).unwrap_or_default();
    pb::LimitInfo {
        scope: Some(wire_scope(scope)),
        tenant: tenant.to_owned(),
        rpm: wire.rpm,
        tpm: wire.tpm,
        concurrency: wire.concurrency,
    }
}

/// A cap as `ListCaps` shows it: with the spend of its current period and what remains.
fn cap_info(
    conn: &Connection,
    scope: Scope,
    tenant: &str,
    cap: &Cap,
    now_unix_ms: i64,
) -> Result<pb::CapInfo, StoreError> {
    let spent = spent(conn, &scope, cap.period, now_unix_ms)?;
    let (start, end) = cap.period.bounds(now_unix_ms);
    let wire = pb::Cap::from(cap);
    Ok(pb::CapInfo {
        scope: Some(wire_scope(scope)),
        tenant: tenant.to_owned(),
        period: wire.period,
        limit_nano_usd: wire.limit_nano_usd,
        soft_at: wire.soft_at,
        allow_unpriced: wire.allow_unpriced,
        spent_nano_usd: spent,
        remaining_nano_usd: cap.limit_nano_usd.saturating_sub(spent).max(0),
        period_start_unix_ms: start,
        period_end_unix_ms: end.unwrap_or(0),
    })
}

/// Limits of live tenants and keys that are not revoked, each row `sort, tenant, key_id, rpm,
/// tpm, concurrency`. `sort` orders by tenant name, then the tenant itself before its keys by
/// id (a space sorts before every character of names and ids).
const LIMIT_ROWS: &str = "
    SELECT t.name || ' ' AS sort, t.name AS tenant, NULL AS key_id, l.rpm, l.tpm, l.concurrency
    FROM limits l JOIN tenants t ON t.id = l.tenant_id WHERE t.state != 'deleted'
    UNION ALL
    SELECT t.name || ' ' || k.id, t.name, k.id, l.rpm, l.tpm, l.concurrency
    FROM limits l JOIN keys k ON k.id = l.key_id JOIN tenants t ON t.id = k.tenant_id
    WHERE k.revoked_unix_ms = 0";

/// A page of limits in list order, optionally of one tenant (by name) and its keys.
fn list_limits(
    conn: &Connection,
    tenant: Option<&str>,
    page: &Page,
) -> Result<(Vec<pb::LimitInfo>, Option<PageToken>), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT * FROM ({LIMIT_ROWS}) WHERE sort > ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY sort LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(
            params![page.after.as_deref().unwrap_or(""), tenant, page.fetch_limit()],
            |row| Ok(read_listed_limit(row)),
        )?
        .collect::<Result<Result<Vec<_>, _>, _>>()??;
    let (rows, next) = page.cut(rows, |(sort, _)| sort.clone());
    Ok((rows.into_iter().map(|(_, info)| info).collect(), next))
}

fn read_listed_limit(row: &Row<'_>) -> Result<(String, pb::LimitInfo), StoreError> {
    let tenant: String = row.get(1)?;
    let key: Option<String> = row.get(2)?;
    let scope = key.map_or_else(|| Scope::Tenant(tenant.clone()), Scope::Key);
    Ok((row.get(0)?, limit_info(scope, &tenant, &read_limits(row, 3)?)))
}

/// Caps of live tenants and keys that are not revoked, each row `sort, tenant, key_id, period,
/// limit_nano_usd, soft_at, allow_unpriced`; a scope's caps are in period order.
const CAP_ROWS: &str = "
    SELECT t.name || ' ' || '/' || CASE c.period WHEN 'day' THEN 1 WHEN 'month' THEN 2 ELSE 3 END AS sort,
        t.name AS tenant, NULL AS key_id, c.period, c.limit_nano_usd, c.soft_at, c.allow_unpriced
    FROM caps c JOIN tenants t ON t.id = c.tenant_id WHERE t.state != 'deleted'
    UNION ALL
    SELECT t.name || ' ' || k.id || '/' || CASE c.period WHEN 'day' THEN 1 WHEN 'month' THEN 2 ELSE 3 END,
        t.name, k.id, c.period, c.limit_nano_usd, c.soft_at, c.allow_unpriced
    FROM caps c JOIN keys k ON k.id = c.key_id JOIN tenants t ON t.id = k.tenant_id
    WHERE k.revoked_unix_ms = 0";

/// A page of caps in list order, optionally of one tenant (by name) and its keys, each with
/// its spend at `now_unix_ms`.
fn list_caps(
    conn: &Connection,
    tenant: Option<&str>,
    page: &Page,
    now_unix_ms: i64,
) -> Result<(Vec<pb::CapInfo>, Option<PageToken>), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT * FROM ({CAP_ROWS}) WHERE sort > ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY sort LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(
            params![page.after.as_deref().unwrap_or(""), tenant, page.fetch_limit()],
            |row| Ok(read_listed_cap(row)),
        )?
        .collect::<Result<Result<Vec<_>, _>, _>>()??;
    let (rows, next) = page.cut(rows, |(sort, ..)| sort.clone());
    let infos = rows
        .into_iter()
        .map(|(_, scope, tenant, cap)| cap_info(conn, scope, &tenant, &cap, now_unix_ms))
        .collect::<Result<_, _>>()?;
    Ok((infos, next))
}

fn read_listed_cap(row: &Row<'_>) -> Result<(String, Scope, String, Cap), StoreError> {
    let tenant: String = row.get(1)?;
    let key: Option<String> = row.get(2)?;
    let scope = key.map_or_else(|| Scope::Tenant(tenant.clone()), Scope::Key);
    Ok((row.get(0)?, scope, tenant, read_cap(row, 3)?))
}

impl Store {
    /// Sets the limits `set` has (`Some`) on a tenant or key; the other kinds stay as they are.
    /// Answers with all its limits after the change.
    pub async fn set_limits(&self, scope: Scope, set: Limits) -> Result<pb::LimitResponse, StoreError> {
        let (limit, version) = self
            .tenancy(move |conn, _, rev| {
                let owner = Owner::resolve(conn, &scope)?;
                let before = limits_of(conn, &owner)?;
                let after = Limits {
                    rpm: set.rpm.or(before.rpm),
                    tpm: set.tpm.or(before.tpm),
                    concurrency: set.concurrency.or(before.concurrency),
                };
                let changed = after != before;
                if changed {
                    write_limits(conn, &owner, &after)?;
                    owner.set_rev(conn, rev)?;
                }
                let info = limit_info(owner.scope(), owner.tenant(), &after);
                Ok(Outcome::changed_if(changed, info))
            })
            .await?;
        Ok(pb::LimitResponse {
            limit: Some(limit),
            version,
        })
    }

    /// Removes the `kinds` of limit of a tenant or key. Returns the version after the call
    /// (unchanged when it had none of them).
    pub async fn remove_limits(&self, scope: Scope, kinds: LimitKinds) -> Result<u64, StoreError> {
        let ((), version) = self
            .tenancy(move |conn, _, rev| {
                let owner = Owner::resolve(conn, &scope)?;
                let before = limits_of(conn, &owner)?;
                let after = Limits {
                    rpm: before.rpm.filter(|_| !kinds.rpm),
                    tpm: before.tpm.filter(|_| !kinds.tpm),
                    concurrency: before.concurrency.filter(|_| !kinds.concurrency),
                };
                let changed = after != before;
                if changed {
                    write_limits(conn, &owner, &after)?;
                    owner.set_rev(conn, rev)?;
                }
                Ok(Outcome::changed_if(changed, ()))
            })
            .await?;
        Ok(version)
    }

    /// Sets the cap of `cap.period` of a tenant or key, replacing the one it had.
    pub async fn set_cap(&self, scope: Scope, cap: Cap) -> Result<pb::CapResponse, StoreError> {
        let (info, version) = self
            .tenancy(move |conn, _, rev| {
                let owner = Owner::resolve(conn, &scope)?;
                let changed = !caps_of(conn, &owner)?.contains(&cap);
                if changed {
                    put_cap(conn, &owner, &cap)?;
                    owner.set_rev(conn, rev)?;
                }
                let info = cap_info(conn, owner.scope(), owner.tenant(), &cap, now_unix_ms())?;
                Ok(Outcome::changed_if(changed, info))
            })
            .await?;
        Ok(pb::CapResponse {
            cap: Some(info),
            version,
        })
    }

    /// Removes the cap of `period` of a tenant or key, or all its caps. Returns the version
    /// after the call (unchanged when there was nothing to remove).
    pub async fn remove_caps(&self, scope: Scope, period: Option<CapPeriod>) -> Result<u64, StoreError> {
        let ((), version) = self
            .tenancy(move |conn, _, rev| {
                let owner = Owner::resolve(conn, &scope)?;
                let changed = delete_caps(conn, &owner, period)? > 0;
                if changed {
                    owner.set_rev(conn, rev)?;
                }
                Ok(Outcome::changed_if(changed, ()))
            })
            .await?;
        Ok(version)
    }

    /// A page of limits, by tenant name and then key id, optionally only of the tenant called
    /// `tenant` and its keys (NOT_FOUND if there is none).
    pub async fn list_limits(
        &self,
        tenant: Option<String>,
        page: Page,
    ) -> Result<(Vec<pb::LimitInfo>, Option<PageToken>), StoreError> {
        self.call(move |db| {
            if let Some(name) = &tenant {
                tenants::get(&db.conn, name)?;
            }
            list_limits(&db.conn, tenant.as_deref(), &page)
        })
        .await
    }

    /// A page of caps, by tenant name, key id and period, each with the spend of its current
    /// period; optionally only of the tenant called `tenant` and its keys (NOT_FOUND if there
    /// is none).
    pub async fn list_caps(
        &self,
        tenant: Option<String>,
        page: Page,
    ) -> Result<(Vec<pb::CapInfo>, Option<PageToken>), StoreError> {
        self.call(move |db| {
            if let Some(name) = &tenant {
                tenants::get(&db.conn, name)?;
            }
            list_caps(&db.conn, tenant.as_deref(), &page, now_unix_ms())
        })
        .await
    }

    /// Every active tenant and every usable key (neither revoked nor expired, of an active
    /// tenant) that has a limit or a cap, with the policy version they are from, read in one
    /// transaction.
    pub async fn limit_config(&self) -> Result<LimitConfig, StoreError> {
        self.call(|db| {
            let tx = db.conn.transaction()?;
            let now = now_unix_ms();
            let config = LimitConfig {
                version: meta::version(&tx)?,
                tenants: tenant_scopes(&tx, "t.state = 'active'", params![])?,
                keys: key_scopes(
                    &tx,
                    "t.state = 'active' AND k.revoked_unix_ms = 0
                     AND (k.expires_unix_ms = 0 OR k.expires_unix_ms > ?1)",
                    params![now],
                )?,
            };
            tx.commit()?;
            Ok(config)
        })
        .await
    }

    /// The settled spend of a tenant (by name) or key (by id) in the `period` that contains
    /// `now_unix_ms`, nano-USD, from the usage ledger's daily rollups.
    #[allow(
        dead_code,
        reason = "for callers outside a listing; ListCaps reads spend in its own call"
    )]
    pub async fn settled_spend(
        &self,
        scope: Scope,
        period: CapPeriod,
        now_unix_ms: i64,
    ) -> Result<i64, StoreError> {
        self.call(move |db| spent(&db.conn, &scope, period, now_unix_ms))
            .await
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{Labels, OnCpLoss, UsageRecord};

    use super::*;
    use crate::store::crypto::MasterKey;
    use crate::store::keys::NewKey;
    use crate::store::tenants::TenantState;
    use crate::store::{NewSecret, StoreThread, TenantUpdate};

    const KEY_A: &str = "key_aaaaaaaaaaaaaaaa";
    const KEY_B: &str = "key_bbbbbbbbbbbbbbbb";

    async fn open(dir: &tempfile::TempDir) -> (Store, StoreThread) {
        Store::open(&dir.path().join("drover.db"), MasterKey::generate())
            .await
            .unwrap()
    }

    async fn tenant(store: &Store, name: &str, on_cp_loss: OnCpLoss) {
        store
            .create_tenant(name.into(), Labels::new(), on_cp_loss, None)
            .await
            .unwrap();
    }

    async fn key(store: &Store, tenant: &str, id: &str, expires_unix_ms: i64) {
        let n = id.as_bytes()[4];
        let key = NewKey {
            id: id.into(),
            tenant_id: 0,
            name: String::new(),
            prefix: String::new(),
            hash: [0; 32],
            models: Vec::new(),
            created_unix_ms: 0,
            expires_unix_ms,
        };
        let secret = NewSecret {
            secret: format!("drv_{id}"),
            prefix: "drv_".into(),
            hash: [n; 32],
        };
        store.create_key(tenant.into(), key, secret, None).await.unwrap();
    }

    fn rpm(n: u64) -> Limits {
        Limits {
            rpm: NonZeroU64::new(n),
            ..Limits::default()
        }
    }

    fn cap(period: CapPeriod, limit_nano_usd: i64) -> Cap {
        Cap {
            period,
            limit_nano_usd,
            soft_at: None,
            allow_unpriced: false,
        }
    }

    fn tenant_scope(name: &str) -> Scope {
        Scope::Tenant(name.into())
    }

    /// The delta a data plane serving `since` gets.
    async fn delta(store: &Store, since: u64) -> pb::Snapshot {
        let base = (store.current().store_id.clone(), since);
        store.policy_update(Some(base)).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn set_limit_merges_and_each_change_is_one_version_and_one_delta() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        tenant(&store, "acme", OnCpLoss::Open).await;
        key(&store, "acme", KEY_A, 0).await;
        let v0 = store.current().version;

        let set = store.set_limits(tenant_scope("acme"), rpm(600)).await.unwrap();
        assert_eq!(set.version, v0 + 1);
        let limit = set.limit.unwrap();
        assert_eq!((limit.rpm, limit.tpm, limit.tenant.as_str()), (600, 0, "acme"));
        let d = delta(&store, v0).await;
        assert_eq!((d.version, d.config_unchanged), (v0 + 1, true));
        assert!(d.keys.is_empty(), "the tenant changed, not its keys");
        assert_eq!(d.tenants.len(), 1);
        assert_eq!(d.tenants[0].limits.unwrap().rpm, 600);

        // The same limit again changes nothing.
        let again = store.set_limits(tenant_scope("acme"), rpm(600)).await.unwrap();
        assert_eq!(again.version, v0 + 1);
        assert!(
            store
                .policy_update(Some((store.current().store_id.clone(), v0 + 1)))
                .await
                .unwrap()
                .is_none()
        );

        // Another kind is merged in; the kinds not given stay.
        let tpm = Limits {
            tpm: NonZeroU64::new(90_000),
            concurrency: NonZeroU32::new(4),
            ..Limits::default()
        };
        let merged = store.set_limits(tenant_scope("acme"), tpm).await.unwrap();
        assert_eq!(merged.version, v0 + 2);
        let limit = merged.limit.unwrap();
        assert_eq!((limit.rpm, limit.tpm, limit.concurrency), (600, 90_000, 4));

        // A key's limits travel with the key, not the tenant.
        store.set_limits(Scope::Key(KEY_A.into()), rpm(10)).await.unwrap();
        let d = delta(&store, v0 + 2).await;
        assert!(d.tenants.is_empty());
        assert_eq!(d.keys.len(), 1);
        assert_eq!(d.keys[0].limits.unwrap().rpm, 10);

        // Removing: some kinds, then the rest, then nothing left to remove.
        let only_rpm = LimitKinds {
            rpm: true,
            ..LimitKinds::default()
        };
        let v = store.remove_limits(tenant_scope("acme"), only_rpm).await.unwrap();
        assert_eq!(v, v0 + 4);
        let d = delta(&store, v0 + 3).await;
        let wire = d.tenants[0].limits.unwrap();
        assert_eq!((wire.rpm, wire.tpm, wire.concurrency), (0, 90_000, 4));
        assert_eq!(
            store
                .remove_limits(tenant_scope("acme"), LimitKinds::ALL)
                .await
                .unwrap(),
            v0 + 5
        );
        assert_eq!(delta(&store, v0 + 4).await.tenants[0].limits, None);
        assert_eq!(
            store
                .remove_limits(tenant_scope("acme"), LimitKinds::ALL)
                .await
                .unwrap(),
            v0 + 5
        );
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn caps_are_one_per_period_and_travel_with_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        tenant(&store, "acme", OnCpLoss::Open).await;
        key(&store, "acme", KEY_A, 0).await;
        let v0 = store.current().version;
        let key_scope = || Scope::Key(KEY_A.into());

        let day = store
            .set_cap(key_scope(), cap(CapPeriod::Day, 5_000))
            .await
            .unwrap();
        assert_eq!(day.version, v0 + 1);
        let info = day.cap.unwrap();
        assert_eq!(
            (info.tenant.as_str(), info.spent_nano_usd, info.remaining_nano_usd),
            ("acme", 0, 5_000)
        );
        assert!(info.period_end_unix_ms - info.period_start_unix_ms == drover_proto::model::MS_PER_DAY);
        let total = Cap {
            soft_at: Some(0.75),
            allow_unpriced: true,
            ..cap(CapPeriod::Total, 9_000)
        };
        store.set_cap(key_scope(), total).await.unwrap();
        assert_eq!(
            store.set_cap(key_scope(), total).await.unwrap().version,
            v0 + 2,
            "unchanged"
        );
        let d = delta(&store, v0).await;
        assert!(d.tenants.is_empty());
        let caps: Vec<_> = d.keys[0]
            .caps
            .iter()
            .map(|c| (c.period, c.limit_nano_usd, c.soft_at))
            .collect();
        assert_eq!(
            caps,
            [
                (pb::CapPeriod::Day as i32, 5_000, 0.0),
                (pb::CapPeriod::Total as i32, 9_000, 0.75)
            ]
        );
        assert!(d.keys[0].caps[1].allow_unpriced);

        // A second cap of a period replaces the first.
        store
            .set_cap(key_scope(), cap(CapPeriod::Day, 7_000))
            .await
            .unwrap();
        let d = delta(&store, v0 + 2).await;
        assert_eq!(d.keys[0].caps.len(), 2);
        assert_eq!(d.keys[0].caps[0].limit_nano_usd, 7_000);

        assert_eq!(
            store
                .remove_caps(key_scope(), Some(CapPeriod::Month))
                .await
                .unwrap(),
            v0 + 3,
            "no month cap: nothing changes"
        );
        assert_eq!(
            store
                .remove_caps(key_scope(), Some(CapPeriod::Day))
                .await
                .unwrap(),
            v0 + 4
        );
        assert_eq!(delta(&store, v0 + 3).await.keys[0].caps.len(), 1);
        assert_eq!(store.remove_caps(key_scope(), None).await.unwrap(), v0 + 5);
        assert!(delta(&store, v0 + 4).await.keys[0].caps.is_empty());
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn on_cp_loss_is_stored_and_sent_as_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        tenant(&store, "strict", OnCpLoss::Closed).await;
        tenant(&store, "easy", OnCpLoss::Open).await;
        let full = store.policy_update(None).await.unwrap().unwrap();
        let closed =
            |s: &pb::Snapshot, name: &str| s.tenants.iter().find(|t| t.name == name).unwrap().fail_closed;
        assert!(closed(&full, "strict"));
        assert!(!closed(&full, "easy"));
        let got = store.get_tenant("strict".into()).await.unwrap().tenant.unwrap();
        assert_eq!(got.on_cp_loss, pb::OnCpLoss::Closed as i32);

        let v = store.current().version;
        let update = |on_cp_loss| TenantUpdate {
            on_cp_loss: Some(on_cp_loss),
            ..TenantUpdate::default()
        };
        let opened = store
            .update_tenant("strict".into(), update(OnCpLoss::Open))
            .await
            .unwrap();
        assert_eq!(opened.version, v + 1);
        assert_eq!(opened.tenant.unwrap().on_cp_loss, pb::OnCpLoss::Open as i32);
        let d = delta(&store, v).await;
        assert_eq!((d.tenants.len(), d.tenants[0].fail_closed), (1, false));
        let same = store
            .update_tenant("strict".into(), update(OnCpLoss::Open))
            .await
            .unwrap();
        assert_eq!(same.version, v + 1, "unchanged");
        // A state change leaves the mode alone.
        store
            .update_tenant(
                "easy".into(),
                TenantUpdate {
                    state: Some(TenantState::Suspended),
                    ..TenantUpdate::default()
                },
            )
            .await
            .unwrap();
        let easy = store.get_tenant("easy".into()).await.unwrap().tenant.unwrap();
        assert_eq!(easy.on_cp_loss, pb::OnCpLoss::Open as i32);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn only_live_tenants_and_keys_that_are_not_revoked_have_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        tenant(&store, "acme", OnCpLoss::Open).await;
        key(&store, "acme", KEY_A, 0).await;
        key(&store, "acme", KEY_B, 0).await;
        store.set_limits(tenant_scope("acme"), rpm(1)).await.unwrap();
        store
            .set_cap(tenant_scope("acme"), cap(CapPeriod::Month, 1))
            .await
            .unwrap();
        for id in [KEY_A, KEY_B] {
            store.set_limits(Scope::Key(id.into()), rpm(2)).await.unwrap();
            store
                .set_cap(Scope::Key(id.into()), cap(CapPeriod::Day, 2))
                .await
                .unwrap();
        }
        let page = || Page::from_wire(0, "", "t".into()).unwrap();
        assert_eq!(store.list_limits(None, page()).await.unwrap().0.len(), 3);

        store.revoke_key(KEY_A.into()).await.unwrap();
        let v = store.current().version;
        for err in [
            store
                .set_limits(Scope::Key(KEY_A.into()), rpm(3))
                .await
                .unwrap_err(),
            store
                .set_cap(Scope::Key(KEY_A.into()), cap(CapPeriod::Day, 3))
                .await
                .unwrap_err(),
            store
                .remove_caps(Scope::Key(KEY_A.into()), None)
                .await
                .unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::NotFoundWhy(_)), "{err}");
            assert!(
                err.to_string().contains(KEY_A) && err.to_string().contains("revoked"),
                "{err}"
            );
        }
        let unknown = store.set_limits(tenant_scope("ghost"), rpm(3)).await.unwrap_err();
        assert!(matches!(unknown, StoreError::NotFound(_)), "{unknown}");
        assert_eq!(store.current().version, v, "refusals change nothing");
        let (limits, _) = store.list_limits(None, page()).await.unwrap();
        assert_eq!(
            limits.len(),
            2,
            "the revoked key's limits went with it: {limits:?}"
        );
        let (caps, _) = store.list_caps(Some("acme".into()), page()).await.unwrap();
        assert_eq!(caps.len(), 2);

        store.delete_tenant("acme".into(), true).await.unwrap();
        let err = store
            .set_cap(tenant_scope("acme"), cap(CapPeriod::Day, 1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        assert!(store.list_limits(None, page()).await.unwrap().0.is_empty());
        assert!(store.list_caps(None, page()).await.unwrap().0.is_empty());
        // The name's next tenant starts without limits.
        tenant(&store, "acme", OnCpLoss::Open).await;
        assert!(store.limit_config().await.unwrap().tenants.is_empty());
        let (limit_rows, cap_rows): (u64, u64) = store
            .call(|db| {
                let n = |sql: &str| db.conn.query_row(sql, [], |r| r.get::<_, i64>(0));
                Ok((
                    n("SELECT count(*) FROM limits")? as u64,
                    n("SELECT count(*) FROM caps")? as u64,
                ))
            })
            .await
            .unwrap();
        assert_eq!((limit_rows, cap_rows), (0, 0));
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn limit_config_holds_active_tenants_and_usable_keys_at_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        tenant(&store, "acme", OnCpLoss::Open).await;
        tenant(&store, "paused", OnCpLoss::Closed).await;
        key(&store, "acme", KEY_A, 0).await;
        key(&store, "acme", "key_eeeeeeeeeeeeeeee", now_unix_ms() + 3_600_000).await;
        key(&store, "acme", "key_xxxxxxxxxxxxxxxx", 1).await;
        key(&store, "paused", KEY_B, 0).await;
        store.set_limits(tenant_scope("acme"), rpm(100)).await.unwrap();
        store
            .set_cap(Scope::Key(KEY_A.into()), cap(CapPeriod::Month, 50))
            .await
            .unwrap();
        store
            .set_cap(Scope::Key(KEY_A.into()), cap(CapPeriod::Day, 5))
            .await
            .unwrap();
        store
            .set_limits(Scope::Key("key_eeeeeeeeeeeeeeee".into()), rpm(7))
            .await
            .unwrap();
        store
            .set_limits(Scope::Key("key_xxxxxxxxxxxxxxxx".into()), rpm(7))
            .await
            .unwrap();
        store.set_limits(tenant_scope("paused"), rpm(1)).await.unwrap();
        store.set_limits(Scope::Key(KEY_B.into()), rpm(1)).await.unwrap();
        store
            .update_tenant(
                "paused".into(),
                TenantUpdate {
                    state: Some(TenantState::Suspended),
                    ..TenantUpdate::default()
                },
            )
            .await
            .unwrap();

        let config = store.limit_config().await.unwrap();
        assert_eq!(config.version, store.current().version);
        assert_eq!(config.tenants.len(), 1, "{config:?}");
        let acme_id = store
            .policy_update(None)
            .await
            .unwrap()
            .unwrap()
            .tenants
            .iter()
            .find(|t| t.name == "acme")
            .unwrap()
            .id;
        let (name, acme) = &config.tenants[&acme_id];
        assert_eq!(
            (name.as_str(), acme.limits, acme.caps.len()),
            ("acme", rpm(100), 0)
        );
        let mut ids: Vec<_> = config.keys.keys().cloned().collect();
        ids.sort();
        assert_eq!(
            ids,
            [KEY_A, "key_eeeeeeeeeeeeeeee"],
            "not the expired key, nor the suspended tenant's"
        );
        let (tenant_id, key_a) = &config.keys[KEY_A];
        assert_eq!(*tenant_id, acme_id);
        assert_eq!(key_a.limits, Limits::default());
        assert_eq!(
            key_a.caps.iter().map(|c| c.period).collect::<Vec<_>>(),
            [CapPeriod::Day, CapPeriod::Month],
            "in period order"
        );
        thread.close().await.unwrap();
    }

    fn record(id: &str, time_unix_ms: i64, tenant: &str, key_id: &str, cost_nano_usd: i64) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            time_unix_ms,
            tenant: tenant.into(),
            key_id: key_id.into(),
            provider: "p".into(),
            model: "m".into(),
            cost_nano_usd,
            status: 200,
            ..UsageRecord::default()
        }
    }

    #[tokio::test]
    async fn spend_is_the_ledgers_in_the_current_utc_period() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let at = |y, m, d, hour: i64| UtcDay::from_ymd(y, m, d).unwrap().start_unix_ms() + hour * 3_600_000;
        let now = at(2026, 3, 15, 12);
        let records = vec![
            record("r1", at(2026, 3, 15, 0), "acme", KEY_A, 1),
            record("r2", at(2026, 3, 15, 23), "acme", KEY_B, 10),
            record("r3", at(2026, 3, 16, 0), "acme", KEY_A, 100),
            record("r4", at(2026, 3, 1, 0), "acme", KEY_A, 1_000),
            record("r5", at(2026, 2, 28, 23), "acme", KEY_A, 10_000),
            record("r6", at(2025, 12, 31, 0), "acme", KEY_A, 100_000),
            record(
                "r7",
                at(2026, 3, 15, 1),
                "other",
                "key_cccccccccccccccc",
                1_000_000,
            ),
        ];
        store.report_usage("dp".into(), records).await.unwrap();
        let spent = |scope: Scope, period| {
            let store = store.clone();
            async move { store.settled_spend(scope, period, now).await.unwrap() }
        };
        let acme = || tenant_scope("acme");
        let key_a = || Scope::Key(KEY_A.into());
        assert_eq!(spent(acme(), CapPeriod::Day).await, 11);
        // The month holds the 16th (a record from the future still counts in its period).
        assert_eq!(spent(acme(), CapPeriod::Month).await, 1_111);
        assert_eq!(spent(acme(), CapPeriod::Total).await, 111_111);
        assert_eq!(spent(key_a(), CapPeriod::Day).await, 1);
        assert_eq!(spent(key_a(), CapPeriod::Month).await, 1_101);
        assert_eq!(spent(key_a(), CapPeriod::Total).await, 111_101);
        assert_eq!(spent(tenant_scope("nobody"), CapPeriod::Total).await, 0);
        thread.close().await.unwrap();
    }
}
