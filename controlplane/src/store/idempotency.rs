//! The `idempotency` table: the answers of creates called with a caller-chosen request id, so
//! that a retry gets the same answer instead of a second tenant or key.
//!
//! An answer is kept encrypted (a key's answer holds its secret) for [`KEEP_MS`], bound to the
//! RPC and to a digest of the request's arguments: the same id with other arguments is refused.
//! Expired answers are pruned by the next create that records one.

use prost::Message;
use rusqlite::{Connection, OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use super::crypto::Cipher;
use crate::error::StoreError;

/// How long an answer is kept, milliseconds (24 hours).
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

/// A create's idempotency: the RPC, the caller's request id, and a digest of its arguments.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub rpc: &'static str,
    pub request_id: String,
    pub request_hash: [u8; 32],
}

impl Idempotency {
    /// `None` when the caller gave no request id. `arguments` are the request's arguments in a
    /// canonical order (the request id itself left out).
    pub fn new(rpc: &'static str, request_id: &str, arguments: &[&[u8]]) -> Option<Self> {
        if request_id.is_empty() {
            return None;
        }
        let mut h = Sha256::new();
        for a in arguments {
            h.update((a.len() as u64).to_le_bytes());
            h.update(a);
        }
        Some(Idempotency {
            rpc,
            request_id: request_id.to_owned(),
            request_hash: h.finalize().into(),
        })
    }

    fn context(&self) -> String {
        format!("answer of {} {:?}", self.rpc, self.request_id)
    }
}

/// The answer an earlier call with the same request id got, if any within [`KEEP_MS`].
/// ALREADY_EXISTS when that call had other arguments.
pub(super) fn replay<M: Message + Default>(
    conn: &Connection,
    cipher: &Cipher,
    key: &Idempotency,
    now_unix_ms: i64,
) -> Result<Option<M>, StoreError> {
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT request_hash, response_enc FROM idempotency
             WHERE rpc = ?1 AND request_id = ?2 AND created_unix_ms > ?3",
        )?
        .query_row(params![key.rpc, key.request_id, now_unix_ms - KEEP_MS], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((hash, sealed)) = row else {
        return Ok(None);
    };
    if hash != key.request_hash {
        return Err(StoreError::AlreadyExists(format!(
            "request_id {:?} was used for a {} call with other arguments",
            key.request_id, key.rpc
        )));
    }
    let plain = cipher.decrypt(&key.context(), &sealed)?;
    M::decode(plain.as_slice())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("stored answer: {e}")))
}

/// Keeps `answer` for retries of `key`, and prunes expired answers.
pub(super) fn record<M: Message>(
    conn: &Connection,
    cipher: &Cipher,
    key: &Idempotency,
    answer: &M,
    now_unix_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE created_unix_ms <= ?1")?
        .execute([now_unix_ms - KEEP_MS])?;
    let sealed = cipher.encrypt(&key.context(), &answer.encode_to_vec())?;
    conn.prepare_cached(
        "INSERT INTO idempotency (rpc, request_id, request_hash, response_enc, created_unix_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (rpc, request_id) DO UPDATE SET request_hash = excluded.request_hash,
             response_enc = excluded.response_enc, created_unix_ms = excluded.created_unix_ms",
    )?
    .execute(params![
        key.rpc,
        key.request_id,
        key.request_hash.as_slice(),
        sealed,
        now_unix_ms
    ])?;
    Ok(())
}
