//! The `keys` table: virtual keys, stored as the SHA-256 of their secret.
//!
//! A key is active until it is revoked (`revoked_unix_ms` set, the row stays so listings and
//! the policy stream can show it went) or its expiry passes. A rotation moves the current hash
//! to `previous_hash`, which keeps working until `previous_expires_unix_ms`. `models` holds the
//! allow-list as lines (model names have no whitespace). `last_used_unix_ms` comes from the
//! usage ledger and is not policy: it never changes `rev`; a change of the key's limits or caps
//! (`store::limits`) does.

use drover_proto::model::{self, Digest, quoted};
use drover_proto::pb;
use rusqlite::{Connection, OptionalExtension as _, Row, params};

use super::limits;
use super::page::{Page, PageToken};
use super::tenants::{id_sql, rev_sql};
use crate::error::StoreError;

/// A key's state as listings filter and show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Revoked,
    Expired,
}

impl KeyState {
    pub fn from_wire(state: i32) -> Option<Self> {
        match pb::KeyState::try_from(state).ok()? {
            pb::KeyState::Active => Some(KeyState::Active),
            pb::KeyState::Revoked => Some(KeyState::Revoked),
            pb::KeyState::Expired => Some(KeyState::Expired),
            pb::KeyState::Unspecified => None,
        }
    }
}

/// A new key, as the admin API asked for it.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub tenant_id: u64,
    pub name: String,
    pub prefix: String,
    pub hash: Digest,
    pub models: Vec<String>,
    pub created_unix_ms: i64,
    /// 0: never.
    pub expires_unix_ms: i64,
}

/// A stored key, with its tenant's name.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub prefix: String,
    pub models: Vec<String>,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub revoked_unix_ms: i64,
    pub previous_expires_unix_ms: i64,
    pub last_used_unix_ms: i64,
}

impl KeyRow {
    pub fn state(&self, now_unix_ms: i64) -> KeyState {
        if self.revoked_unix_ms != 0 {
            KeyState::Revoked
        } else if self.expires_unix_ms != 0 && self.expires_unix_ms <= now_unix_ms {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    pub fn info(&self, now_unix_ms: i64) -> pb::KeyInfo {
        let state = match self.state(now_unix_ms) {
            KeyState::Active => pb::KeyState::Active,
            KeyState::Revoked => pb::KeyState::Revoked,
            KeyState::Expired => pb::KeyState::Expired,
        };
        pb::KeyInfo {
            id: self.id.clone(),
            prefix: self.prefix.clone(),
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            models: self.models.clone(),
            created_unix_ms: self.created_unix_ms,
            expires_unix_ms: self.expires_unix_ms,
            last_used_unix_ms: self.last_used_unix_ms,
            state: state.into(),
            revoked_unix_ms: self.revoked_unix_ms,
            previous_expires_unix_ms: if self.previous_expires_unix_ms > now_unix_ms {
                self.previous_expires_unix_ms
            } else {
                0
            },
        }
    }
}

fn encode_models(models: &[String]) -> String {
    models.join("\n")
}

fn decode_models(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

const COLUMNS: &str = "k.id, k.tenant_id, t.name, k.name, k.prefix, k.models, k.created_unix_ms, \
     k.expires_unix_ms, k.revoked_unix_ms, k.previous_expires_unix_ms, k.last_used_unix_ms";

fn read(row: &Row<'_>) -> Result<KeyRow, StoreError> {
    let models: String = row.get(5)?;
    Ok(KeyRow {
        id: row.get(0)?,
        tenant: row.get(2)?,
        name: row.get(3)?,
        prefix: row.get(4)?,
        models: decode_models(&models),
        created_unix_ms: row.get(6)?,
        expires_unix_ms: row.get(7)?,
        revoked_unix_ms: row.get(8)?,
        previous_expires_unix_ms: row.get(9)?,
        last_used_unix_ms: row.get(10)?,
    })
}

pub(super) fn insert(conn: &Connection, key: &NewKey, rev: u64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO keys (id, tenant_id, name, prefix, hash, models, created_unix_ms, expires_unix_ms,
             revoked_unix_ms, previous_hash, previous_expires_unix_ms, last_used_unix_ms, rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, NULL, 0, 0, ?9)",
        params![
            key.id,
            id_sql(key.tenant_id),
            key.name,
            key.prefix,
            key.hash.as_slice(),
            encode_models(&key.models),
            key.created_unix_ms,
            key.expires_unix_ms,
            rev_sql(rev),
        ],
    )?;
    Ok(())
}

pub(crate) fn find(conn: &Connection, id: &str) -> Result<Option<KeyRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?1"
    ))?;
    stmt.query_row([id], |row| Ok(read(row))).optional()?.transpose()
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<KeyRow, StoreError> {
    find(conn, id)?.ok_or_else(|| StoreError::NotFound(format!("key {}", quoted(id))))
}

/// A page of keys by id, optionally of one tenant and in one state.
pub(crate) fn list(
    conn: &Connection,
    tenant_id: Option<u64>,
    state: Option<KeyState>,
    now_unix_ms: i64,
    page: &Page,
) -> Result<(Vec<KeyRow>, Option<PageToken>), StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let state_sql = match state {
        None => "1",
        Some(KeyState::Revoked) => "k.revoked_unix_ms != 0",
        Some(KeyState::Expired) => {
            "k.revoked_unix_ms = 0 AND k.expires_unix_ms != 0 AND k.expires_unix_ms <= ?3"
        }
        Some(KeyState::Active) => {
            "k.revoked_unix_ms = 0 AND (k.expires_unix_ms = 0 OR k.expires_unix_ms > ?3)"
        }
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.id > ?1 AND (?2 IS NULL OR k.tenant_id = ?2) AND ({state_sql}) AND ?3 = ?3
         ORDER BY k.id LIMIT ?4"
    ))?;
    let rows = stmt
        .query_map(
            params![after, tenant_id.map(id_sql), now_unix_ms, page.fetch_limit()],
            |row| Ok(read(row)),
        )?
        .collect::<Result<Result<Vec<_>, _>, _>>()??;
    Ok(page.cut(rows, |k| k.id.clone()))
}

/// Revokes a key. Returns whether it was active or expired before (false: already revoked).
pub(super) fn revoke(conn: &Connection, id: &str, now_unix_ms: i64, rev: u64) -> Result<bool, StoreError> {
    let changed = conn.execute(
        "UPDATE keys SET revoked_unix_ms = ?2, previous_hash = NULL, previous_expires_unix_ms = 0, rev = ?3
         WHERE id = ?1 AND revoked_unix_ms = 0",
        params![id, now_unix_ms, rev_sql(rev)],
    )?;
    Ok(changed > 0)
}

/// Revokes every key of a tenant that is not revoked yet. Returns how many were active (not
/// expired) before.
pub(super) fn revoke_all_of(
    conn: &Connection,
    tenant_id: u64,
    now_unix_ms: i64,
    rev: u64,
) -> Result<u64, StoreError> {
    let active = count_active(conn, tenant_id, now_unix_ms)?;
    conn.execute(
        "UPDATE keys SET revoked_unix_ms = ?2, previous_hash = NULL, previous_expires_unix_ms = 0, rev = ?3
         WHERE tenant_id = ?1 AND revoked_unix_ms = 0",
        params![id_sql(tenant_id), now_unix_ms, rev_sql(rev)],
    )?;
    Ok(active)
}

/// Keys of a tenant that are neither revoked nor expired.
pub(super) fn count_active(conn: &Connection, tenant_id: u64, now_unix_ms: i64) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM keys WHERE tenant_id = ?1 AND revoked_unix_ms = 0
             AND (expires_unix_ms = 0 OR expires_unix_ms > ?2)",
        )?
        .query_row(params![id_sql(tenant_id), now_unix_ms], |row| row.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Gives a key a new secret; the old one keeps working until `previous_expires_unix_ms`
/// (none when that is not in the future).
pub(super) fn rotate(
    conn: &Connection,
    id: &str,
    hash: &Digest,
    prefix: &str,
    previous_expires_unix_ms: i64,
    now_unix_ms: i64,
    rev: u64,
) -> Result<(), StoreError> {
    let keep_previous = previous_expires_unix_ms > now_unix_ms;
    conn.execute(
        "UPDATE keys SET
             previous_hash = CASE WHEN ?5 THEN hash ELSE NULL END,
             previous_expires_unix_ms = CASE WHEN ?5 THEN ?4 ELSE 0 END,
             hash = ?2, prefix = ?3, rev = ?6
         WHERE id = ?1",
        params![
            id,
            hash.as_slice(),
            prefix,
            previous_expires_unix_ms,
            keep_previous,
            rev_sql(rev)
        ],
    )?;
    Ok(())
}

/// Sets a key's `rev`: its limits or caps changed.
pub(super) fn set_rev(conn: &Connection, id: &str, rev: u64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE keys SET rev = ?2 WHERE id = ?1",
        params![id, rev_sql(rev)],
    )?;
    Ok(())
}

/// Records when keys were last used, from usage records. Not a policy change.
pub(crate) fn touch(conn: &Connection, used: &[(String, i64)]) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached("UPDATE keys SET last_used_unix_ms = ?2 WHERE id = ?1 AND last_used_unix_ms < ?2")?;
    for (id, at) in used {
        stmt.execute(params![id, at])?;
    }
    Ok(())
}

fn blob_digest(blob: &[u8], what: &str) -> Result<Digest, StoreError> {
    blob.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} of {} bytes", blob.len())))
}

/// Keys as the policy stream sends them, with their limits and caps: with `since`, those
/// changed after that version (usable ones, and the ids of revoked ones); without, every key
/// neither revoked nor expired.
pub(super) fn changed_since(
    conn: &Connection,
    since: Option<u64>,
    now_unix_ms: i64,
) -> Result<(Vec<pb::VirtualKey>, Vec<String>), StoreError> {
    let mut configs = limits::key_scopes(conn, "k.rev > ?1", &[&rev_sql(since.unwrap_or(0))])?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, tenant_id, hash, models, expires_unix_ms, revoked_unix_ms, previous_hash,
                previous_expires_unix_ms
         FROM keys
         WHERE rev > ?1 AND (?2 OR (revoked_unix_ms = 0 AND (expires_unix_ms = 0 OR expires_unix_ms > ?3)))",
    )?;
    let mut rows = stmt.query(params![rev_sql(since.unwrap_or(0)), since.is_some(), now_unix_ms])?;
    let (mut live, mut removed) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let revoked: i64 = row.get(5)?;
        if revoked != 0 {
            removed.push(id);
            continue;
        }
        let tenant_id: i64 = row.get(1)?;
        let hash: Vec<u8> = row.get(2)?;
        let models: String = row.get(3)?;
        let previous: Option<Vec<u8>> = row.get(6)?;
        let previous_expires: i64 = row.get(7)?;
        let previous = match previous {
            Some(blob) if previous_expires > now_unix_ms => {
                Some((blob_digest(&blob, "previous hash")?, previous_expires))
            }
            _ => None,
        };
        let config = configs.remove(&id).map(|(_, c)| c).unwrap_or_default();
        let key = model::VirtualKey {
            id,
            tenant_id: u64::try_from(tenant_id)
                .map_err(|_| StoreError::Corrupt(format!("tenant id {tenant_id}")))?,
            hash: blob_digest(&hash, "key hash")?,
            models: decode_models(&models),
            expires_unix_ms: {
                let at: i64 = row.get(4)?;
                (at != 0).then_some(at)
            },
            previous,
            limits: config.limits,
            caps: config.caps,
        };
        live.push(pb::VirtualKey::from(&key));
    }
    Ok((live, removed))
}
