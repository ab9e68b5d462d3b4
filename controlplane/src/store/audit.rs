//! The `audit` table: records appended in the transaction of the change they describe, read
//! back by position, time, actor or tenant, walked to verify the chain, and pruned from the
//! start by retention, which moves the `audit_checkpoint` row forward.
//!
//! Only the store thread writes, so the chain's head is kept in memory ([`Log`]) and advanced
//! after each commit; a transaction that rolls back leaves it where it was.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use tokio::sync::watch;

use crate::audit::{
    Anchor, Entry, GENESIS, Hash, PRUNE_RPC, Problem, Record, SYSTEM_ACTOR, TenantRef, Walk, prune_target,
};
use crate::error::StoreError;

/// The chain's newest record (or the checkpoint, when there is none), as the store thread
/// knows it, and a channel that tells followers the newest position committed.
pub(super) struct Log {
    head: Anchor,
    head_time_unix_ms: i64,
    committed: watch::Sender<u64>,
}

impl Log {
    pub(super) fn load(conn: &Connection) -> Result<Log, StoreError> {
        let newest: Option<(i64, Vec<u8>, i64)> = conn
            .query_row(
                "SELECT seq, hash, time_unix_ms FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (head, time) = match newest {
            Some((seq, hash, time)) => (anchor(seq, &hash)?, time),
            None => {
                let (checkpoint, time) = checkpoint(conn)?;
                (checkpoint, time)
            }
        };
        let (committed, _) = watch::channel(head.seq);
        Ok(Log {
            head,
            head_time_unix_ms: time,
            committed,
        })
    }

    /// Writes `entry` as the next record, at policy `version`, in the caller's transaction.
    /// Call [`Log::committed`] with the answer once that transaction has committed.
    pub(super) fn write(
        &self,
        conn: &Connection,
        entry: &Entry,
        version: u64,
        now_unix_ms: i64,
    ) -> Result<Record, StoreError> {
        let tenant_id = match &entry.tenant {
            Some(t) => resolve_tenant(conn, t)?,
            None => None,
        };
        let mut record = Record {
            seq: self.head.seq + 1,
            // Never earlier than its predecessor, whatever the clock does.
            time_unix_ms: now_unix_ms.max(self.head_time_unix_ms),
            actor: entry.actor.clone(),
            role: entry.role.clone(),
            actor_tenant: entry.actor_tenant.clone(),
            source: entry.source.clone(),
            rpc: entry.rpc.clone(),
            target: entry.target.clone(),
            tenant_id,
            request: entry.request.clone(),
            outcome: entry.outcome.clone(),
            message: entry.message.clone(),
            version,
            unrecorded: entry.unrecorded,
            prev_hash: self.head.hash,
            hash: GENESIS,
        };
        record.hash = record.digest();
        insert(conn, &record)?;
        Ok(record)
    }

    /// The transaction that wrote `record` has committed.
    pub(super) fn committed(&mut self, record: &Record) {
        self.head = Anchor {
            seq: record.seq,
            hash: record.hash,
        };
        self.head_time_unix_ms = record.time_unix_ms;
        self.committed.send_replace(record.seq);
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn anchor(seq: i64, hash: &[u8]) -> Result<Anchor, StoreError> {
    Ok(Anchor {
        seq: u64::try_from(seq).unwrap_or(0),
        hash: to_hash(hash)?,
    })
}

fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("an audit hash of {} bytes", bytes.len())))
}

fn insert(conn: &Connection, r: &Record) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (seq, time_unix_ms, actor, role, actor_tenant, source, rpc, target,
             tenant_id, request, outcome, message, version, unrecorded, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        to_i64(r.seq),
        r.time_unix_ms,
        r.actor,
        r.role,
        r.actor_tenant,
        r.source,
        r.rpc,
        r.target,
        r.tenant_id,
        r.request,
        r.outcome,
        r.message,
        to_i64(r.version),
        to_i64(r.unrecorded),
        r.prev_hash.as_slice(),
        r.hash.as_slice(),
    ])?;
    Ok(())
}

/// The tenant a record concerns, by id: a live tenant of that name (else the newest deleted
/// one, for a record of its deletion), or the tenant of a key.
fn resolve_tenant(conn: &Connection, t: &TenantRef) -> Result<Option<i64>, StoreError> {
    Ok(match t {
        TenantRef::Id(id) => Some(*id),
        TenantRef::Name(name) => conn
            .prepare_cached(
                "SELECT id FROM tenants WHERE name = ?1 ORDER BY state = 'deleted', id DESC LIMIT 1",
            )?
            .query_row([name], |r| r.get(0))
            .optional()?,
        TenantRef::Key(id) => conn
            .prepare_cached("SELECT tenant_id FROM keys WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?,
    })
}

const COLUMNS: &str = "seq, time_unix_ms, actor, role, actor_tenant, source, rpc, target, tenant_id, \
                       request, outcome, message, version, unrecorded, prev_hash, hash";

fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Record, Vec<u8>, Vec<u8>)> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0)) };
    Ok((
        Record {
            seq: u(0)?,
            time_unix_ms: row.get(1)?,
            actor: row.get(2)?,
            role: row.get(3)?,
            actor_tenant: row.get(4)?,
            source: row.get(5)?,
            rpc: row.get(6)?,
            target: row.get(7)?,
            tenant_id: row.get(8)?,
            request: row.get(9)?,
            outcome: row.get(10)?,
            message: row.get(11)?,
            version: u(12)?,
            unrecorded: u(13)?,
            prev_hash: GENESIS,
            hash: GENESIS,
        },
        row.get(14)?,
        row.get(15)?,
    ))
}

fn finish((mut r, prev, hash): (Record, Vec<u8>, Vec<u8>)) -> Result<Record, StoreError> {
    r.prev_hash = to_hash(&prev)?;
    r.hash = to_hash(&hash)?;
    Ok(r)
}

/// The checkpoint: where the chain starts after retention pruned, and when that last ran.
pub(super) fn checkpoint(conn: &Connection) -> Result<(Anchor, i64), StoreError> {
    let (seq, hash, time): (i64, Vec<u8>, i64) = conn.query_row(
        "SELECT seq, hash, time_unix_ms FROM audit_checkpoint WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok((anchor(seq, &hash)?, time))
}

/// Which records a read wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only after this position.
    pub after_seq: u64,
    pub actor: Option<String>,
    pub since_unix_ms: Option<i64>,
    /// Only records of this tenant (a tenant-scoped reader).
    pub tenant_id: Option<i64>,
    /// At most this many.
    pub limit: u32,
    /// The newest `limit` instead of the oldest (still answered oldest first).
    pub newest: bool,
}

/// Records that match `filter`, oldest first, and the position the read covered: the last
/// record answered, or, when fewer than `limit` matched, the newest record of the log (so a
/// follower does not scan the same records again).
pub(super) fn list(conn: &Connection, filter: &Filter) -> Result<(Vec<Record>, u64), StoreError> {
    let newest: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?;
    let sql = format!(
        "SELECT {COLUMNS} FROM audit
         WHERE seq > ?1 AND seq <= ?2
           AND (?3 IS NULL OR actor = ?3)
           AND (?4 IS NULL OR time_unix_ms >= ?4)
           AND (?5 IS NULL OR tenant_id = ?5)
         ORDER BY seq {} LIMIT ?6",
        if filter.newest { "DESC" } else { "ASC" }
    );
    let mut records = conn
        .prepare_cached(&sql)?
        .query_map(
            params![
                to_i64(filter.after_seq),
                newest,
                filter.actor,
                filter.since_unix_ms,
                filter.tenant_id,
                i64::from(filter.limit)
            ],
            read,
        )?
        .map(|row| finish(row?))
        .collect::<Result<Vec<_>, _>>()?;
    if filter.newest {
        records.reverse();
    }
    let covered = if records.len() == filter.limit as usize && !filter.newest {
        records.last().map_or(0, |r| r.seq)
    } else {
        u64::try_from(newest).unwrap_or(0)
    };
    Ok((records, covered))
}

/// Deletes up to `max` records older than `before_unix_ms` from the start of the chain, moves
/// the checkpoint to the last one deleted and writes a record saying so, in one transaction.
/// Returns how many were deleted (0: nothing to prune, nothing written).
pub(super) fn prune(
    conn: &Connection,
    log: &Log,
    before_unix_ms: i64,
    max: u32,
    now_unix_ms: i64,
) -> Result<Option<(u64, Record)>, StoreError> {
    // Times never go backwards along the chain, so the records to prune are a prefix of it.
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, hash FROM audit
             WHERE time_unix_ms < ?1 AND seq < (SELECT MIN(seq) FROM audit) + ?2
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![before_unix_ms, i64::from(max)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((seq, hash)) = last else {
        return Ok(None);
    };
    let deleted = conn.execute("DELETE FROM audit WHERE seq <= ?1", [seq])?;
    conn.execute(
        "UPDATE audit_checkpoint SET seq = ?1, hash = ?2, time_unix_ms = ?3, pruned = pruned + ?4
         WHERE id = 1",
        params![seq, hash, now_unix_ms, deleted],
    )?;
    let deleted = u64::try_from(deleted).unwrap_or(0);
    let entry = Entry {
        actor: SYSTEM_ACTOR.to_owned(),
        rpc: PRUNE_RPC.to_owned(),
        target: prune_target(anchor(seq, &hash)?),
        outcome: crate::audit::OK.to_owned(),
        message: format!(
            "retention pruned {deleted} record(s) older than {before_unix_ms} (Unix ms), through #{seq}"
        ),
        ..Entry::default()
    };
    let version = super::meta::version(conn)?;
    let record = log.write(conn, &entry, version, now_unix_ms)?;
    Ok(Some((deleted, record)))
}

/// What a walk over the whole chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub checkpoint: Anchor,
    pub head: Anchor,
    pub problem: Option<Problem>,
}

/// Walks the chain of the database at `path` on a connection of its own (read-only, one read
/// transaction, so the walk sees one state while the store thread goes on writing). Blocking.
pub fn verify(path: &Path, anchor: Option<Anchor>) -> Result<Verified, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch("BEGIN")?;
    let (checkpoint, _) = checkpoint(&conn)?;
    let mut walk = Walk::new(checkpoint, anchor);
    let mut problem = None;
    {
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let record = finish(read(row)?)?;
            if let Err(p) = walk.push(&record) {
                problem = Some(p);
                break;
            }
        }
    }
    if problem.is_none() {
        problem = walk.finish().err();
    }
    conn.execute_batch("COMMIT")?;
    Ok(Verified {
        records: walk.records(),
        checkpoint,
        head: walk.head(),
        problem,
    })
}

impl super::Store {
    /// Appends `entry` on its own (a refused call: nothing changed), at the current version.
    pub async fn append_audit(&self, entry: Entry) -> Result<Record, StoreError> {
        self.call(move |db| {
            let version = super::meta::version(&db.conn)?;
            db.append_audit(&entry, version)
        })
        .await
    }

    /// Records that match `filter`, and the position the read covered (see [`list`]).
    pub async fn list_audit(&self, filter: Filter) -> Result<(Vec<Record>, u64), StoreError> {
        self.call(move |db| list(&db.conn, &filter)).await
    }

    /// Prunes records older than `before_unix_ms`, a batch of at most `batch` per transaction,
    /// until none is left. Returns how many were pruned.
    pub async fn prune_audit(&self, before_unix_ms: i64, batch: u32) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let pruned = self
                .call(move |db| {
                    let now = drover_proto::model::now_unix_ms();
                    let tx = db
                        .conn
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let Some((deleted, record)) = prune(&tx, &db.audit, before_unix_ms, batch, now)? else {
                        return Ok(0);
                    };
                    tx.commit()?;
                    db.audit.committed(&record);
                    Ok(deleted)
                })
                .await?;
            total += pruned;
            if pruned < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// Walks the chain (on a connection of its own, off the async workers).
    pub async fn verify_audit(&self, anchor: Option<Anchor>) -> Result<Verified, StoreError> {
        let path = self.path().to_owned();
        tokio::task::spawn_blocking(move || verify(&path, anchor))
            .await
            .map_err(|e| StoreError::Corrupt(format!("the verification task failed: {e}")))?
    }
}
