//! The `meta` row: the store's identity, the policy version, and the master-key check value.
//!
//! `store_id` is random and fixed at creation; `version` starts at 1 and is bumped in the same
//! transaction as every change. `key_check` is a value encrypted under the master key at
//! creation, so a wrong key is caught at startup rather than on the first stored credential.

use rand::Rng as _;
use rusqlite::{Connection, OptionalExtension as _};

use super::crypto::Cipher;
use crate::error::StoreError;

const KEY_CHECK_CONTEXT: &str = "master key check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"drover";

/// Creates the meta row on a new database, or checks the master key against an existing one.
pub(super) fn init(conn: &Connection, cipher: &Cipher) -> Result<(), StoreError> {
    let check: Option<Vec<u8>> = conn
        .query_row("SELECT key_check FROM meta WHERE id = 1", [], |row| row.get(0))
        .optional()?;
    match check {
        Some(blob) => {
            cipher.decrypt(KEY_CHECK_CONTEXT, &blob).map_err(|_| {
                StoreError::Crypto(
                    "the master key (DROVER_MASTER_KEY or the .master-key file beside the database) \
                     is not the one this database was created with"
                        .to_owned(),
                )
            })?;
        }
        None => {
            let blob = cipher.encrypt(KEY_CHECK_CONTEXT, KEY_CHECK_PLAINTEXT)?;
            conn.execute(
                "INSERT INTO meta (id, store_id, version, key_check) VALUES (1, ?1, 1, ?2)",
                rusqlite::params![new_store_id(), blob],
            )?;
        }
    }
    Ok(())
}

fn new_store_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    crate::audit::hex(&bytes)
}

pub(crate) fn store_id(conn: &Connection) -> Result<String, StoreError> {
    Ok(conn.query_row("SELECT store_id FROM meta WHERE id = 1", [], |row| row.get(0))?)
}

pub(crate) fn version(conn: &Connection) -> Result<u64, StoreError> {
    let v: i64 = conn.query_row("SELECT version FROM meta WHERE id = 1", [], |row| row.get(0))?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("policy version {v}")))
}

/// The version of the last change to the config (providers, routes, prices, modules).
pub(crate) fn config_version(conn: &Connection) -> Result<u64, StoreError> {
    let v: i64 = conn.query_row("SELECT config_version FROM meta WHERE id = 1", [], |row| {
        row.get(0)
    })?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("config version {v}")))
}

/// Increments the policy version, and with `config` records it as the config's version too;
/// call inside the transaction that makes the change.
pub(super) fn bump(conn: &Connection, config: bool) -> Result<u64, StoreError> {
    let v: i64 = conn.query_row(
        "UPDATE meta SET version = version + 1,
             config_version = CASE WHEN ?1 THEN version + 1 ELSE config_version END
         WHERE id = 1 RETURNING version",
        [config],
        |row| row.get(0),
    )?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("policy version {v}")))
}

/// Until when (Unix ms) a lease granted or renewed by this store's control plane may be spent.
pub(crate) fn lease_horizon(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT lease_horizon_unix_ms FROM meta WHERE id = 1", [], |row| {
            row.get(0)
        })?,
    )
}

/// Moves the lease horizon to `unix_ms` if that is later.
pub(crate) fn extend_lease_horizon(conn: &Connection, unix_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE meta SET lease_horizon_unix_ms = max(lease_horizon_unix_ms, ?1) WHERE id = 1",
        [unix_ms],
    )?;
    Ok(())
}
