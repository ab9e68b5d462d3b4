//! `UsageService.Report`: usage batches from the data planes, and the retention task that
//! compacts old raw records.
//!
//! A batch is validated whole before the store sees it (one invalid record refuses the batch
//! with INVALID_ARGUMENT, nothing written), then applied exactly once in one transaction on the
//! store thread (`store::usage`); the answer is sent after the commit. Authentication is
//! `auth::TokenCheck::dataplane`, in front (the data plane token or the admin token).
//!
//! Not here: the ledger's schema and queries (`store::usage`), `QueryUsage` (`admin_service`).

use drover_proto::model::now_unix_ms;
use std::time::Duration;

use drover_proto::model::{InvalidPolicy, UsageRecord, validate_model_name};
use drover_proto::pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use drover_proto::limits::MAX_USAGE_BATCH;

use crate::error::StoreError;
use crate::store::Store;

/// How often the retention task runs (it also runs once at start).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The `UsageService` implementation.
pub struct UsageApi {
    store: Store,
}

impl UsageApi {
    pub fn new(store: Store) -> Self {
        UsageApi { store }
    }
}

/// Validates a whole batch: every record, or none. The records' strings are taken over, not
/// copied.
fn validate(batch: pb::UsageBatch) -> Result<(String, Vec<UsageRecord>), InvalidPolicy> {
    if batch.records.len() > MAX_USAGE_BATCH {
        return Err(InvalidPolicy::new(
            "records",
            format!(
                "{} records in one batch; at most {MAX_USAGE_BATCH}",
                batch.records.len()
            ),
        ));
    }
    if !batch.dataplane_id.is_empty() {
        validate_model_name("dataplane_id", &batch.dataplane_id)?;
    }
    let records = batch
        .records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            UsageRecord::try_from(r)
                .map_err(|e| InvalidPolicy::new(format!("records[{i}]/{}", e.field), e.reason))
        })
        .collect::<Result<_, _>>()?;
    Ok((batch.dataplane_id, records))
}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for UsageApi {
    async fn report(&self, request: Request<pb::UsageBatch>) -> Result<Response<pb::UsageAck>, Status> {
        let (dataplane_id, records) = validate(request.into_inner()).map_err(StoreError::Invalid)?;
        if records.is_empty() {
            return Ok(Response::new(pb::UsageAck::default()));
        }
        let applied = self.store.report_usage(dataplane_id.clone(), records).await?;
        tracing::debug!(
            dataplane = %dataplane_id,
            applied = applied.applied,
            duplicates = applied.duplicates,
            "usage batch applied"
        );
        Ok(Response::new(pb::UsageAck {
            applied: applied.applied,
            duplicates: applied.duplicates,
        }))
    }
}

/// Audit records pruned per transaction.
const AUDIT_PRUNE_BATCH: u32 = 10_000;

/// Runs a retention pass now and then every [`RETENTION_INTERVAL`], until `stop`.
/// `retention` `None` keeps raw records forever (ids of records compacted earlier are still
/// forgotten after the dedup window).
/// `audit` `Some` also prunes audit records older than that.
pub(crate) async fn run_retention(
    store: Store,
    retention: Option<Duration>,
    audit: Option<Duration>,
    stop: CancellationToken,
) {
    loop {
        if let Some(age) = audit {
            let before = now_unix_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            match store.prune_audit(before, AUDIT_PRUNE_BATCH).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(pruned, before_unix_ms = before, "audit retention: records pruned")
                }
                Err(StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "audit retention pass failed; retrying later"),
            }
        }
        match store.compact_usage(retention, now_unix_ms()).await {
            Ok(done) if done.deleted > 0 || done.forgotten > 0 => tracing::info!(
                compacted = done.deleted,
                forgotten_ids = done.forgotten,
                compacted_before_unix_ms = done.compacted_before_unix_ms,
                "usage retention: raw records compacted into the daily rollups"
            ),
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "usage retention pass failed; retrying later"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETENTION_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            time_unix_ms: 1_764_000_000_000,
            status: 200,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_is_valid_whole_or_not_at_all() {
        let mut batch = pb::UsageBatch {
            dataplane_id: "dp-1".into(),
            records: vec![record("a"), record("b")],
        };
        let (dataplane_id, records) = validate(batch.clone()).unwrap();
        assert_eq!((dataplane_id.as_str(), records.len()), ("dp-1", 2));
        batch.records[1].status = 0;
        let err = validate(batch.clone()).unwrap_err();
        assert_eq!(err.field, "records[1]/usage \"b\"");
        batch.records = (0..=MAX_USAGE_BATCH).map(|i| record(&i.to_string())).collect();
        assert!(
            validate(batch.clone())
                .unwrap_err()
                .reason
                .contains("at most 10000")
        );
        batch.records.clear();
        batch.dataplane_id = "bad id".into();
        assert_eq!(validate(batch).unwrap_err().field, "dataplane_id");
    }
}
