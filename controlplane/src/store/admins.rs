//! The `admins` table: admin identities, their tokens as SHA-256, and which of them are in
//! force ([`Identities`], published to the admin API's guard after every change).

use std::collections::HashMap;
use std::sync::Arc;

use drover_proto::model::{Digest, now_unix_ms, quoted};
use drover_proto::pb;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::crypto::Cipher;
use super::idempotency::Idempotency;
use super::tenancy::{Outcome, once};
use super::{Db, Store, meta};
use crate::audit::SYSTEM_ACTOR;
use crate::error::StoreError;
use crate::roles::{Identity, ROOT, Role, TenantScope};

/// The identities in force, by the SHA-256 of their token.
pub type Identities = Arc<HashMap<Digest, Identity>>;

/// A new identity, as the admin API made it.
#[derive(Debug, Clone)]
pub struct NewAdmin {
    pub name: String,
    pub role: Role,
    /// The tenant's name; the store resolves it.
    pub tenant: Option<String>,
    pub token_hash: Digest,
    pub token_prefix: String,
    pub created_by: String,
}

/// Identities whose token works now: not revoked, and scoped to no tenant or to a live one.
pub(super) fn load_active(conn: &Connection) -> Result<Identities, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT a.name, a.role, a.token_hash, a.tenant_id, t.name, t.state, t.created_unix_ms
         FROM admins a LEFT JOIN tenants t ON t.id = a.tenant_id
         WHERE a.revoked_unix_ms IS NULL",
    )?;
    let mut map = HashMap::new();
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, Option<i64>>(6)?,
        ))
    })?;
    for row in rows {
        let (name, role, hash, tenant_id, tenant_name, tenant_state, tenant_created) = row?;
        // A row that cannot be read grants nothing, and does not stop the others (or a
        // revocation) from taking effect.
        let (Some(role), Ok(hash)) = (Role::parse(&role), Digest::try_from(hash.as_slice())) else {
            tracing::error!(admin = %name, "an admin identity in the database cannot be read; it is refused");
            continue;
        };
        let tenant = match (tenant_id, tenant_name) {
            (None, _) => None,
            (Some(id), Some(name)) if tenant_state.as_deref() != Some("deleted") => Some(TenantScope {
                id,
                name,
                created_unix_ms: tenant_created.unwrap_or(0),
            }),
            // Its tenant is gone: so is everything it could reach.
            (Some(_), _) => continue,
        };
        map.insert(hash, Identity { name, role, tenant });
    }
    Ok(Arc::new(map))
}

/// Adds an identity. ALREADY_EXISTS while one of that name is active; NOT_FOUND for an unknown
/// tenant.
pub(super) fn insert(conn: &Connection, new: &NewAdmin, now: i64) -> Result<(), StoreError> {
    if new.name == ROOT || new.name == SYSTEM_ACTOR {
        return Err(StoreError::AlreadyExists(format!(
            "admin {:?} (reserved: {ROOT:?} is the bootstrap token's identity, {SYSTEM_ACTOR:?} the \
             control plane's own in the audit log)",
            new.name
        )));
    }
    let tenant_id = match &new.tenant {
        Some(name) => Some(super::tenants::get(conn, name)?.id),
        None => None,
    };
    let taken: Option<i64> = conn
        .query_row(
            "SELECT id FROM admins WHERE name = ?1 AND revoked_unix_ms IS NULL",
            [&new.name],
            |r| r.get(0),
        )
        .optional()?;
    if taken.is_some() {
        return Err(StoreError::AlreadyExists(format!("admin {}", quoted(&new.name))));
    }
    conn.execute(
        "INSERT INTO admins (name, role, tenant_id, token_hash, token_prefix, created_unix_ms, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            new.name,
            new.role.as_str(),
            tenant_id,
            new.token_hash.as_slice(),
            new.token_prefix,
            now,
            new.created_by
        ],
    )?;
    Ok(())
}

/// Revokes the active identity `name`. NOT_FOUND when there is none.
pub(super) fn revoke(conn: &Connection, name: &str, now: i64) -> Result<pb::AdminInfo, StoreError> {
    if name == ROOT {
        return Err(StoreError::FailedPrecondition(format!(
            "{ROOT:?} is the bootstrap token's identity and cannot be revoked; change \
             DROVER_ADMIN_TOKEN (or the token file) and restart instead"
        )));
    }
    let id: i64 = conn
        .query_row(
            "SELECT id FROM admins WHERE name = ?1 AND revoked_unix_ms IS NULL",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("admin {}", quoted(name))))?;
    conn.execute(
        "UPDATE admins SET revoked_unix_ms = ?1 WHERE id = ?2",
        params![now, id],
    )?;
    info_by_id(conn, id)
}

const INFO: &str = "SELECT a.name, a.role, COALESCE(t.name, ''), a.token_prefix, a.created_unix_ms,
                           a.created_by, COALESCE(a.revoked_unix_ms, 0)
                    FROM admins a LEFT JOIN tenants t ON t.id = a.tenant_id";

fn info_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<pb::AdminInfo> {
    let role: String = r.get(1)?;
    Ok(pb::AdminInfo {
        name: r.get(0)?,
        role: Role::parse(&role).map_or(pb::AdminRole::Unspecified, Role::to_wire) as i32,
        tenant: r.get(2)?,
        token_prefix: r.get(3)?,
        created_unix_ms: r.get(4)?,
        created_by: r.get(5)?,
        revoked_unix_ms: r.get(6)?,
    })
}

pub(super) fn info_by_id(conn: &Connection, id: i64) -> Result<pb::AdminInfo, StoreError> {
    Ok(conn.query_row(&format!("{INFO} WHERE a.id = ?1"), [id], info_row)?)
}

/// The active identity `name`.
pub(super) fn info(conn: &Connection, name: &str) -> Result<pb::AdminInfo, StoreError> {
    conn.query_row(
        &format!("{INFO} WHERE a.name = ?1 AND a.revoked_unix_ms IS NULL"),
        [name],
        info_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("admin {}", quoted(name))))
}

/// Every identity, in order of creation.
pub(super) fn list(conn: &Connection) -> Result<Vec<pb::AdminInfo>, StoreError> {
    let mut stmt = conn.prepare(&format!("{INFO} ORDER BY a.id"))?;
    let rows = stmt.query_map([], info_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

impl Db {
    /// Runs `f` in a write transaction that leaves the policy version alone; commits, records
    /// and publishes the identities again when it reports a change.
    fn change_admins<T>(
        &mut self,
        audit: Option<&crate::audit::Entry>,
        f: impl FnOnce(&Connection, &Cipher) -> Result<Outcome<T>, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version = meta::version(&tx)?;
        match f(&tx, &self.cipher)? {
            Outcome::Unchanged(value) => {
                drop(tx);
                self.record_unchanged(audit, version)?;
                Ok(value)
            }
            Outcome::Changed(value) => {
                // Read in the transaction, published once it commits: a revocation is in force
                // when the caller hears of it.
                let identities = load_active(&tx)?;
                super::commit_audited(tx, &mut self.audit, audit, version)?;
                self.identities.send_replace(identities);
                Ok(value)
            }
        }
    }
}

impl Store {
    /// Creates an identity with the token `token` (of which `new` holds the hash and prefix).
    /// With `idempotency`, a repeated call gets the first call's answer, token included.
    pub async fn create_admin(
        &self,
        new: NewAdmin,
        token: String,
        idempotency: Option<Idempotency>,
    ) -> Result<pb::AdminWithTokenResponse, StoreError> {
        let audit = self.audit.clone();
        self.call(move |db| {
            db.change_admins(audit.as_deref(), move |conn, cipher| {
                let now = now_unix_ms();
                once(conn, cipher, idempotency.as_ref(), now, || {
                    insert(conn, &new, now)?;
                    Ok(pb::AdminWithTokenResponse {
                        admin: Some(info(conn, &new.name)?),
                        token,
                        version: meta::version(conn)?,
                    })
                })
            })
        })
        .await
    }

    pub async fn revoke_admin(&self, name: String) -> Result<pb::AdminResponse, StoreError> {
        let audit = self.audit.clone();
        self.call(move |db| {
            db.change_admins(audit.as_deref(), move |conn, _| {
                let admin = revoke(conn, &name, now_unix_ms())?;
                Ok(Outcome::Changed(pb::AdminResponse {
                    admin: Some(admin),
                    version: meta::version(conn)?,
                }))
            })
        })
        .await
    }

    pub async fn list_admins(&self) -> Result<Vec<pb::AdminInfo>, StoreError> {
        self.call(|db| list(&db.conn)).await
    }
}
