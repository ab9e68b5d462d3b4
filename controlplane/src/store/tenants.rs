//! The `tenants` table: who keys belong to.
//!
//! A tenant is `active`, `suspended` or `deleted`. A deleted tenant keeps its row (and its id,
//! never reused) so that the policy stream can tell data planes it went; its name is free for a
//! new tenant. Labels are stored as `key=value` lines (keys have no `=`, values no control
//! characters). `on_cp_loss` is `open` or `closed`. Every change sets `rev` to the policy version
//! it makes, including a change of the tenant's limits or caps (`store::limits`).

use drover_proto::model::{self, Labels, OnCpLoss, quoted};
use drover_proto::pb;
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::limits;
use super::page::{Page, PageToken};
use crate::error::StoreError;

/// A tenant's state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantState {
    Active,
    Suspended,
}

impl TenantState {
    fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(TenantState::Active),
            "suspended" => Ok(TenantState::Suspended),
            other => Err(StoreError::Corrupt(format!("tenant state {other:?}"))),
        }
    }

    pub fn from_wire(state: i32) -> Option<Self> {
        match pb::TenantState::try_from(state).ok()? {
            pb::TenantState::Active => Some(TenantState::Active),
            pb::TenantState::Suspended => Some(TenantState::Suspended),
            pb::TenantState::Unspecified => None,
        }
    }

    fn wire(self) -> pb::TenantState {
        match self {
            TenantState::Active => pb::TenantState::Active,
            TenantState::Suspended => pb::TenantState::Suspended,
        }
    }
}

pub(crate) fn encode_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_labels(text: &str) -> Labels {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A live (not deleted) tenant's row.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: u64,
    pub name: String,
    pub state: TenantState,
    pub labels: Labels,
    pub created_unix_ms: i64,
    pub on_cp_loss: OnCpLoss,
}

const COLUMNS: &str = "id, name, state, labels, created_unix_ms, on_cp_loss";

fn parse_on_cp_loss(text: &str) -> Result<OnCpLoss, StoreError> {
    OnCpLoss::parse(text).ok_or_else(|| StoreError::Corrupt(format!("tenant on_cp_loss {text:?}")))
}

fn read(row: &Row<'_>) -> Result<TenantRow, StoreError> {
    let id: i64 = row.get(0)?;
    let state: String = row.get(2)?;
    let labels: String = row.get(3)?;
    let on_cp_loss: String = row.get(5)?;
    Ok(TenantRow {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("tenant id {id}")))?,
        name: row.get(1)?,
        state: TenantState::parse(&state)?,
        labels: decode_labels(&labels),
        created_unix_ms: row.get(4)?,
        on_cp_loss: parse_on_cp_loss(&on_cp_loss)?,
    })
}

/// The live tenant called `name`, if any.
pub(crate) fn find(conn: &Connection, name: &str) -> Result<Option<TenantRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tenants WHERE name = ?1 AND state != 'deleted'"
    ))?;
    stmt.query_row([name], |row| Ok(read(row)))
        .optional()?
        .transpose()
}

/// The live tenant called `name`, or NOT_FOUND.
pub(crate) fn get(conn: &Connection, name: &str) -> Result<TenantRow, StoreError> {
    find(conn, name)?.ok_or_else(|| StoreError::NotFound(format!("tenant {}", quoted(name))))
}

/// Inserts a new active tenant. ALREADY_EXISTS when a live tenant has the name.
pub(super) fn insert(
    conn: &Connection,
    name: &str,
    labels: &Labels,
    on_cp_loss: OnCpLoss,
    now_unix_ms: i64,
    rev: u64,
) -> Result<TenantRow, StoreError> {
    if find(conn, name)?.is_some() {
        return Err(StoreError::AlreadyExists(format!("tenant {}", quoted(name))));
    }
    conn.execute(
        "INSERT INTO tenants (name, labels, state, created_unix_ms, rev, on_cp_loss)
         VALUES (?1, ?2, 'active', ?3, ?4, ?5)",
        params![
            name,
            encode_labels(labels),
            now_unix_ms,
            rev_sql(rev),
            on_cp_loss.as_str()
        ],
    )?;
    get(conn, name)
}

/// Writes a tenant's state, labels and `on_cp_loss` as `updated` has them. Returns whether
/// anything changed.
pub(super) fn update(
    conn: &Connection,
    tenant: &TenantRow,
    updated: &TenantRow,
    rev: u64,
) -> Result<bool, StoreError> {
    if tenant.state == updated.state
        && tenant.labels == updated.labels
        && tenant.on_cp_loss == updated.on_cp_loss
    {
        return Ok(false);
    }
    conn.execute(
        "UPDATE tenants SET state = ?2, labels = ?3, on_cp_loss = ?4, rev = ?5 WHERE id = ?1",
        params![
            id_sql(tenant.id),
            updated.state.as_str(),
            encode_labels(&updated.labels),
            updated.on_cp_loss.as_str(),
            rev_sql(rev)
        ],
    )?;
    Ok(true)
}

/// Sets a tenant's `rev`: its limits or caps changed.
pub(super) fn set_rev(conn: &Connection, id: u64, rev: u64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tenants SET rev = ?2 WHERE id = ?1",
        params![id_sql(id), rev_sql(rev)],
    )?;
    Ok(())
}

/// Marks a tenant deleted.
pub(super) fn delete(conn: &Connection, id: u64, rev: u64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE tenants SET state = 'deleted', rev = ?2 WHERE id = ?1",
        params![id_sql(id), rev_sql(rev)],
    )?;
    Ok(())
}

/// A page of live tenants by name, optionally in one state.
pub(crate) fn list(
    conn: &Connection,
    state: Option<TenantState>,
    page: &Page,
) -> Result<(Vec<TenantRow>, Option<PageToken>), StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tenants
         WHERE state != 'deleted' AND name > ?1 AND (?2 IS NULL OR state = ?2)
         ORDER BY name LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(
            params![after, state.map(TenantState::as_str), page.fetch_limit()],
            |row| Ok(read(row)),
        )?
        .collect::<Result<Result<Vec<_>, _>, _>>()??;
    Ok(page.cut(rows, |t| t.name.clone()))
}

/// The wire view of a tenant, with its count of active keys.
pub(crate) fn info(conn: &Connection, t: &TenantRow, now_unix_ms: i64) -> Result<pb::TenantInfo, StoreError> {
    let active: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM keys WHERE tenant_id = ?1 AND revoked_unix_ms = 0
             AND (expires_unix_ms = 0 OR expires_unix_ms > ?2)",
        )?
        .query_row(params![id_sql(t.id), now_unix_ms], |row| row.get(0))?;
    Ok(pb::TenantInfo {
        name: t.name.clone(),
        state: t.state.wire().into(),
        labels: t.labels.clone().into_iter().collect(),
        created_unix_ms: t.created_unix_ms,
        active_keys: u64::try_from(active).unwrap_or(0),
        on_cp_loss: pb::OnCpLoss::from(t.on_cp_loss).into(),
    })
}

/// Tenants as the policy stream sends them, with their limits and caps: with `since`, those
/// changed after that version (live ones, and the ids of those deleted); without, every live
/// tenant.
pub(super) fn changed_since(
    conn: &Connection,
    since: Option<u64>,
) -> Result<(Vec<pb::Tenant>, Vec<u64>), StoreError> {
    let (delta, since) = (since.is_some(), rev_sql(since.unwrap_or(0)));
    let mut configs = limits::tenant_scopes(conn, "t.rev > ?1", &[&since])?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, state, on_cp_loss FROM tenants WHERE rev > ?1 AND (?2 OR state != 'deleted')",
    )?;
    let mut rows = stmt.query(params![since, delta])?;
    let (mut live, mut removed) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let id = u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("tenant id {id}")))?;
        let state: String = row.get(2)?;
        if state == "deleted" {
            removed.push(id);
            continue;
        }
        let on_cp_loss: String = row.get(3)?;
        let config = configs.remove(&id).map(|(_, c)| c).unwrap_or_default();
        live.push(pb::Tenant::from(&model::Tenant {
            id,
            name: row.get(1)?,
            suspended: state == "suspended",
            limits: config.limits,
            caps: config.caps,
            on_cp_loss: parse_on_cp_loss(&on_cp_loss)?,
        }));
    }
    Ok((live, removed))
}

pub(super) fn id_sql(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

pub(super) fn rev_sql(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_survive_the_round_trip() {
        let labels: Labels = [("team", "search"), ("k8s.io/app", ""), ("cost-center", "a=b c")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(decode_labels(&encode_labels(&labels)), labels);
        assert!(decode_labels("").is_empty());
    }
}
