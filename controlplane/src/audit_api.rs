//! The audit side of `AdminService`: who a call is (`Caller`, put on the request by the guard),
//! the records refused calls leave (`Refusals`, rate-limited per source), and the RPCs that read
//! the log: `ListAudit`, `FollowAudit` (a server stream) and `VerifyAudit`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use drover_proto::model::InvalidPolicy;
use drover_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{Anchor, Entry, RefusalBudget, TenantRef, parse_hash};
use crate::error::StoreError;
use crate::roles::Identity;
use crate::store::Store;
use crate::store::audit::Filter;
use crate::store::page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

/// Longest copy of a request kept in a record, bytes; a longer one is summarised.
const MAX_REQUEST_JSON: usize = 64 * 1024;
/// Records a follower is sent per read of the store.
const FOLLOW_BATCH: u32 = 500;
/// Records buffered for a follower that reads slowly; past them the stream waits for it.
const FOLLOW_BUFFER: usize = 64;

/// Who made a call, as the guard admitted it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub source: Option<SocketAddr>,
}

impl Caller {
    /// The draft of this call's audit record: who, from where, which RPC, what it asked.
    pub fn entry<T: serde::Serialize>(&self, rpc: &str, request: &T) -> Entry {
        Entry {
            actor: self.identity.name.clone(),
            role: self.identity.role.as_str().to_owned(),
            actor_tenant: self
                .identity
                .tenant
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            tenant: self.identity.tenant.as_ref().map(|t| TenantRef::Id(t.id)),
            request: request_json(request),
            source_ip: self.source.map(|s| s.ip()),
            ..anonymous(rpc, self.source)
        }
    }
}

/// The draft record of a call from a caller not (yet) known.
pub fn anonymous(rpc: &str, source: Option<SocketAddr>) -> Entry {
    Entry {
        source: source.map(|s| s.to_string()).unwrap_or_default(),
        rpc: rpc.to_owned(),
        outcome: crate::audit::OK.to_owned(),
        ..Entry::default()
    }
}

fn request_json<T: serde::Serialize>(request: &T) -> String {
    match serde_json::to_string(request) {
        Ok(json) if json.len() <= MAX_REQUEST_JSON => json,
        Ok(json) => format!("{{\"omitted\":\"request of {} bytes\"}}", json.len()),
        Err(e) => format!("{{\"omitted\":{:?}}}", e.to_string()),
    }
}

/// The name of a gRPC code as records spell outcomes (`permission_denied`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Records refused calls, as many as the budget allows per source.
pub struct Refusals {
    store: Store,
    budget: Arc<RefusalBudget>,
}

impl Refusals {
    pub fn new(store: Store) -> Refusals {
        Refusals {
            store,
            budget: Arc::default(),
        }
    }

    /// The budget, for records of calls that change nothing.
    pub fn budget(&self) -> Arc<RefusalBudget> {
        self.budget.clone()
    }

    /// Records that the call `entry` drafts was refused with `status`, unless its source is
    /// over its budget (then it is counted, and the next record from it says how many).
    pub async fn record(&self, mut entry: Entry, status: &tonic::Status, source: Option<SocketAddr>) {
        let Some(unrecorded) =
            self.budget
                .admit(source.map(|s| s.ip()), &entry.actor, tokio::time::Instant::now())
        else {
            return;
        };
        entry.outcome = code_name(status.code()).to_owned();
        entry.message = status.message().to_owned();
        entry.unrecorded = unrecorded;
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::warn!(error = %e, "recording a refused admin call");
        }
    }
}

/// The filters of a read, checked, held to the caller's tenant when it is scoped.
fn filter(
    caller: &Caller,
    after_seq: u64,
    limit: u32,
    actor: &str,
    since_unix_ms: i64,
) -> Result<Filter, InvalidPolicy> {
    if limit > MAX_PAGE_SIZE {
        return Err(InvalidPolicy::new(
            "limit",
            format!("{limit} is more than {MAX_PAGE_SIZE}"),
        ));
    }
    if since_unix_ms < 0 {
        return Err(InvalidPolicy::new("since_unix_ms", "must not be negative"));
    }
    Ok(Filter {
        after_seq,
        actor: (!actor.is_empty()).then(|| actor.to_owned()),
        since_unix_ms: (since_unix_ms != 0).then_some(since_unix_ms),
        tenant_id: caller.identity.tenant.as_ref().map(|t| t.id),
        limit: if limit == 0 { DEFAULT_PAGE_SIZE } else { limit },
        newest: false,
    })
}

pub async fn list_audit(
    store: &Store,
    caller: &Caller,
    r: pb::ListAuditRequest,
) -> Result<pb::ListAuditResponse, StoreError> {
    let filter = Filter {
        newest: r.newest,
        ..filter(caller, r.after_seq, r.limit, &r.actor, r.since_unix_ms)?
    };
    let full = filter.limit;
    let (records, _) = store.list_audit(filter).await?;
    let next_after_seq = match records.last() {
        Some(last) if records.len() == full as usize && !r.newest => last.seq,
        _ => 0,
    };
    Ok(pb::ListAuditResponse {
        records: records.iter().map(|r| r.to_wire()).collect(),
        next_after_seq,
    })
}

pub type FollowStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AuditRecord, tonic::Status>> + Send>>;

/// Sends the records after the starting point that match, then each new one as it commits,
/// until the caller hangs up or the control plane stops.
/// The stream ends with UNAUTHENTICATED when the caller's identity is revoked (or its tenant
/// deleted) while it follows.
pub fn follow_audit(
    store: Store,
    caller: Caller,
    r: pb::FollowAuditRequest,
    stop: CancellationToken,
) -> Result<FollowStream, StoreError> {
    let base = filter(&caller, r.after_seq, FOLLOW_BATCH, &r.actor, r.since_unix_ms)?;
    let who = caller.identity;
    let mut identities = store.identities();
    if r.backlog > MAX_PAGE_SIZE {
        return Err(
            InvalidPolicy::new("backlog", format!("{} is more than {MAX_PAGE_SIZE}", r.backlog)).into(),
        );
    }
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    tokio::spawn(async move {
        let run = async {
            let mut head = store.audit_head();
            let mut cursor = r.after_seq;
            if cursor == 0 {
                cursor = *head.borrow_and_update();
                if r.backlog > 0 {
                    let (records, _) = store
                        .list_audit(Filter {
                            limit: r.backlog,
                            newest: true,
                            after_seq: 0,
                            ..base.clone()
                        })
                        .await?;
                    for record in &records {
                        if record.seq <= cursor && tx.send(Ok(record.to_wire())).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            loop {
                let still_valid = who.name == crate::roles::ROOT
                    || identities.borrow_and_update().values().any(|i| *i == who);
                if !still_valid {
                    let _ = tx
                        .send(Err(tonic::Status::unauthenticated(
                            "the identity following the audit log was revoked",
                        )))
                        .await;
                    return Ok(());
                }
                head.borrow_and_update();
                let (records, covered) = store
                    .list_audit(Filter {
                        after_seq: cursor,
                        ..base.clone()
                    })
                    .await?;
                for record in &records {
                    if tx.send(Ok(record.to_wire())).await.is_err() {
                        return Ok(());
                    }
                }
                cursor = cursor.max(covered);
                if records.len() < FOLLOW_BATCH as usize && *head.borrow() <= cursor {
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return Ok(()) },
                        changed = identities.changed() => if changed.is_err() { return Ok(()) },
                        () = tx.closed() => return Ok(()),
                        () = stop.cancelled() => return Ok(()),
                    }
                }
            }
        };
        let ended: Result<(), StoreError> = run.await;
        if let Err(e) = ended {
            let _ = tx.send(Err(e.into())).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

pub async fn verify_audit(
    store: &Store,
    r: pb::VerifyAuditRequest,
) -> Result<pb::VerifyAuditResponse, StoreError> {
    let anchor = match r.anchor {
        None => None,
        Some(a) => Some(Anchor {
            seq: a.seq,
            hash: parse_hash(&a.hash)
                .ok_or_else(|| InvalidPolicy::new("anchor.hash", "must be 64 hex digits (a SHA-256)"))?,
        }),
    };
    let v = store.verify_audit(anchor).await?;
    match &v.problem {
        None => tracing::info!(records = v.records, head = v.head.seq, "audit chain verified"),
        Some(p) => tracing::warn!(seq = p.seq, problem = %p.what, "audit chain verification failed"),
    }
    Ok(pb::VerifyAuditResponse {
        ok: v.problem.is_none(),
        records: v.records,
        checkpoint: Some(v.checkpoint.to_wire()),
        head: Some(v.head.to_wire()),
        first_bad_seq: v.problem.as_ref().map_or(0, |p| p.seq),
        problem: v.problem.map(|p| p.what).unwrap_or_default(),
    })
}
