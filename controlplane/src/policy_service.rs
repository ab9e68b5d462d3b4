//! `PolicyService.Watch`: streams snapshots to the data planes and records their ACKs/NACKs.
//!
//! One task per stream. It waits for the hello, sends the current snapshot unless the data
//! plane already serves it, then sends each newly published snapshot (the `watch` channel
//! coalesces bursts; the same `(store_id, version)` is never sent twice on a stream). ACKs and
//! NACKs go to the `DataPlanes` registry, which feeds `AdminService.Status`. Every stream task
//! ends when the control plane shuts down, so the server's graceful shutdown never waits on one.
//!
//! Not here: validating snapshots (the data plane does that) and authentication (`auth`).

use drover_proto::model::now_unix_ms;
use std::collections::HashMap;
use std::net::SocketAddr;
#[expect(
    clippy::disallowed_types,
    reason = "the data-plane registry: off the request path, each lock held for a few field updates and never across an await"
)]
use std::sync::Mutex;
use std::sync::{Arc, PoisonError};

use drover_proto::model::{self, validate_model_name};
use drover_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::store::Store;

/// Longest NACK message kept, in bytes.
const MAX_ERROR_LEN: usize = 1024;
/// Longest HTTP address kept for a data plane (informational), in bytes.
const MAX_HTTP_ADDR_LEN: usize = 256;
/// Disconnected data planes remembered for Status, beyond which the longest-unseen are forgotten.
const MAX_REMEMBERED: usize = 1024;
/// Snapshots buffered per stream; the `watch` channel coalesces anything beyond.
const STREAM_BUFFER: usize = 1;

/// The `PolicyService` implementation.
pub struct PolicyApi {
    store: Store,
    dataplanes: Arc<DataPlanes>,
    shutdown: CancellationToken,
}

impl PolicyApi {
    pub fn new(store: Store, dataplanes: Arc<DataPlanes>, shutdown: CancellationToken) -> Self {
        PolicyApi {
            store,
            dataplanes,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for PolicyApi {
    type WatchStream = ReceiverStream<Result<pb::Snapshot, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = Session {
            store: self.store.clone(),
            dataplanes: self.dataplanes.clone(),
            shutdown: self.shutdown.clone(),
            tx,
            peer,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One open Watch stream.
struct Session {
    store: Store,
    dataplanes: Arc<DataPlanes>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<pb::Snapshot, Status>>,
    peer: Option<SocketAddr>,
}

impl Session {
    async fn run(self, mut inbound: Streaming<pb::WatchRequest>) {
        let hello = tokio::select! {
            () = self.shutdown.cancelled() => return,
            () = self.tx.closed() => return,
            msg = inbound.message() => msg,
        };
        let hello = match hello {
            Ok(Some(hello)) if hello.response_version == 0 => hello,
            Ok(Some(_)) => {
                self.refuse("the first message must be a hello (response_version 0)")
                    .await;
                return;
            }
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(error = %status, "policy stream failed before its hello");
                return;
            }
        };
        if let Err(invalid) = validate_model_name("dataplane_id", &hello.dataplane_id) {
            self.refuse(&invalid.to_string()).await;
            return;
        }

        let mut snapshots = self.store.snapshots();
        let current = snapshots.borrow_and_update().clone();
        let id = hello.dataplane_id.clone();
        let stream = self.dataplanes.connect(&hello, self.peer, &current.store_id);
        let _connected = Connected {
            dataplanes: &self.dataplanes,
            id: &id,
            stream,
        };
        tracing::info!(dataplane = %id, peer = ?self.peer, serves = hello.version, "data plane connected");

        // What the data plane serves, as far as this stream knows: what it said in its hello,
        // then what was last sent (or, after a NACK, what it says it still serves).
        let mut base = serving(&hello);
        if !self.send_update(&id, &mut base).await {
            return;
        }
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => {
                        self.dataplanes.record(&id, &msg);
                        if msg.response_version != 0 && !msg.error.is_empty() {
                            // The next update builds on what it kept.
                            base = serving(&msg);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(dataplane = %id, error = %status, "policy stream failed");
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        // The store closed: the control plane is stopping.
                        break;
                    }
                    snapshots.borrow_and_update();
                    if !self.send_update(&id, &mut base).await {
                        break;
                    }
                }
            }
        }
        tracing::info!(dataplane = %id, "data plane disconnected");
    }

    /// Sends what the data plane needs to go from `base` to the current version (nothing when
    /// it is there already) and records it as the new base. Returns false when the stream is
    /// gone or the control plane is stopping.
    async fn send_update(&self, id: &str, base: &mut Option<(String, u64)>) -> bool {
        let update = match self.store.policy_update(base.clone()).await {
            Ok(Some(update)) => update,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(dataplane = %id, error = %e, "cannot read the policy for a data plane");
                return false;
            }
        };
        let next = (update.store_id.clone(), update.version);
        tracing::debug!(
            dataplane = %id,
            version = next.1,
            base = update.base_version,
            keys = update.keys.len(),
            removed_keys = update.removed_keys.len(),
            "sending policy"
        );
        let delivered = tokio::select! {
            () = self.shutdown.cancelled() => false,
            result = self.tx.send(Ok(update)) => result.is_ok(),
        };
        if delivered {
            *base = Some(next);
        }
        delivered
    }

    async fn refuse(&self, why: &str) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            _ = self.tx.send(Err(Status::invalid_argument(why))) => {}
        }
    }
}

/// The snapshot a data plane says it serves, if any.
fn serving(msg: &pb::WatchRequest) -> Option<(String, u64)> {
    (!msg.store_id.is_empty() && msg.version != 0).then(|| (msg.store_id.clone(), msg.version))
}

/// Marks the data plane disconnected when its stream task ends, however it ends.
struct Connected<'a> {
    dataplanes: &'a DataPlanes,
    id: &'a str,
    stream: u64,
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.dataplanes.disconnect(self.id, self.stream);
    }
}

/// What the control plane knows of each data plane seen since it started. Off the request
/// path; each lock is held for a few field updates and never across an `.await`.
#[derive(Default)]
pub struct DataPlanes {
    #[expect(clippy::disallowed_types, reason = "see the import")]
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_stream: u64,
    planes: HashMap<String, Entry>,
}

#[derive(Default)]
struct Entry {
    http_addr: String,
    peer: String,
    served_version: u64,
    last_error: String,
    rejected_version: u64,
    last_seen_unix_ms: i64,
    /// Providers of the snapshot it serves that it cannot use, as it last reported them.
    unavailable: Vec<model::UnavailableProvider>,
    /// Route targets of the snapshot it serves that it cannot use, as it last reported them.
    unusable: Vec<model::UnusableTarget>,
    /// The stream that currently represents it, if connected. A newer stream replaces an
    /// older one, so the older one ending does not mark the data plane disconnected.
    stream: Option<u64>,
}

impl DataPlanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a hello; returns the id of this stream.
    fn connect(&self, hello: &pb::WatchRequest, peer: Option<SocketAddr>, store_id: &str) -> u64 {
        let mut registry = self.lock();
        registry.next_stream += 1;
        let stream = registry.next_stream;
        if !registry.planes.contains_key(&hello.dataplane_id) {
            registry.forget_oldest_disconnected();
        }
        let entry = registry.planes.entry(hello.dataplane_id.clone()).or_default();
        entry.stream = Some(stream);
        entry.peer = peer.map(|p| p.to_string()).unwrap_or_default();
        entry.http_addr = truncate(&hello.http_addr, MAX_HTTP_ADDR_LEN).to_owned();
        // What it serves now, if it is a snapshot of this store.
        entry.served_version = if hello.store_id == store_id {
            hello.version
        } else {
            0
        };
        entry.last_seen_unix_ms = now_unix_ms();
        entry.unavailable = model::UnavailableProvider::from_wire(&hello.unavailable_providers);
        entry.unusable = model::UnusableTarget::from_wire(&hello.unusable_targets);
        stream
    }

    /// Records an ACK or a NACK (or a repeated hello, which only counts as a sign of life).
    fn record(&self, id: &str, msg: &pb::WatchRequest) {
        let mut registry = self.lock();
        let Some(entry) = registry.planes.get_mut(id) else {
            return;
        };
        entry.last_seen_unix_ms = now_unix_ms();
        if !msg.http_addr.is_empty() {
            entry.http_addr = truncate(&msg.http_addr, MAX_HTTP_ADDR_LEN).to_owned();
        }
        // Every message describes the snapshot served now (a NACKed one changes nothing).
        let unavailable = model::UnavailableProvider::from_wire(&msg.unavailable_providers);
        if unavailable != entry.unavailable {
            for u in unavailable.iter().filter(|u| !entry.unavailable.contains(u)) {
                tracing::warn!(dataplane = %id, provider = %u.provider, reason = %u.reason, "provider unavailable on a data plane");
            }
            entry.unavailable = unavailable;
        }
        let unusable = model::UnusableTarget::from_wire(&msg.unusable_targets);
        if unusable != entry.unusable {
            for u in unusable.iter().filter(|u| !entry.unusable.contains(u)) {
                tracing::warn!(dataplane = %id, route = %u.route, target = %u.target, reason = %u.reason, "route target unusable on a data plane");
            }
            entry.unusable = unusable;
        }
        if msg.response_version == 0 {
            return;
        }
        if msg.error.is_empty() {
            tracing::debug!(dataplane = %id, version = msg.response_version, "snapshot acknowledged");
            entry.served_version = msg.response_version;
            entry.last_error.clear();
            entry.rejected_version = 0;
        } else {
            let error = truncate(&msg.error, MAX_ERROR_LEN);
            tracing::warn!(dataplane = %id, version = msg.response_version, error, "snapshot rejected");
            entry.last_error = error.to_owned();
            entry.rejected_version = msg.response_version;
        }
    }

    fn disconnect(&self, id: &str, stream: u64) {
        let mut registry = self.lock();
        if let Some(entry) = registry.planes.get_mut(id)
            && entry.stream == Some(stream)
        {
            entry.stream = None;
            entry.last_seen_unix_ms = now_unix_ms();
        }
    }

    /// Every known data plane, sorted by id.
    pub fn list(&self) -> Vec<pb::DataPlaneStatus> {
        let registry = self.lock();
        let mut list: Vec<_> = registry
            .planes
            .iter()
            .map(|(id, e)| pb::DataPlaneStatus {
                id: id.clone(),
                http_addr: e.http_addr.clone(),
                peer: e.peer.clone(),
                served_version: e.served_version,
                connected: e.stream.is_some(),
                last_error: e.last_error.clone(),
                rejected_version: e.rejected_version,
                last_seen_unix_ms: e.last_seen_unix_ms,
                unavailable_providers: e.unavailable.iter().map(Into::into).collect(),
                unusable_targets: e.unusable.iter().map(Into::into).collect(),
                // Filled in by `AdminService.Status` from the lease streams.
                leases: None,
            })
            .collect();
        drop(registry);
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}

impl Registry {
    fn forget_oldest_disconnected(&mut self) {
        if self.planes.len() < MAX_REMEMBERED {
            return;
        }
        let oldest = self
            .planes
            .iter()
            .filter(|(_, e)| e.stream.is_none())
            .min_by_key(|(_, e)| e.last_seen_unix_ms)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.planes.remove(&id);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, response_version: u64, error: &str) -> pb::WatchRequest {
        pb::WatchRequest {
            dataplane_id: id.into(),
            response_version,
            error: error.into(),
            ..Default::default()
        }
    }

    #[test]
    fn registry_tracks_acks_nacks_and_the_latest_stream() {
        let planes = DataPlanes::default();
        let hello = pb::WatchRequest {
            dataplane_id: "dp-b".into(),
            store_id: "s1".into(),
            version: 4,
            http_addr: "127.0.0.1:8080".into(),
            ..Default::default()
        };
        let first = planes.connect(&hello, None, "s1");
        planes.connect(&msg("dp-a", 0, ""), None, "s1");
        let list = planes.list();
        assert_eq!(
            list.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["dp-a", "dp-b"]
        );
        assert_eq!(list[1].served_version, 4);
        assert_eq!(list[1].http_addr, "127.0.0.1:8080");

        planes.record("dp-b", &msg("dp-b", 5, "bad route"));
        let b = &planes.list()[1];
        assert_eq!(
            (b.served_version, b.rejected_version, b.last_error.as_str()),
            (4, 5, "bad route")
        );
        planes.record("dp-b", &msg("dp-b", 6, ""));
        let b = &planes.list()[1];
        assert_eq!(
            (b.served_version, b.rejected_version, b.last_error.as_str()),
            (6, 0, "")
        );

        // A reconnect replaces the stream; the old stream ending leaves it connected.
        let second = planes.connect(&hello, None, "s1");
        planes.disconnect("dp-b", first);
        assert!(planes.list()[1].connected);
        planes.disconnect("dp-b", second);
        assert!(!planes.list()[1].connected);
    }

    #[test]
    fn what_a_data_plane_cannot_use_follows_every_message_and_is_bounded() {
        let planes = DataPlanes::default();
        let with = |response_version: u64, n: usize| pb::WatchRequest {
            dataplane_id: "dp".into(),
            response_version,
            unavailable_providers: (0..n)
                .map(|i| pb::UnavailableProvider {
                    provider: format!("p{i}"),
                    reason: "r".repeat(10_000),
                })
                .collect(),
            unusable_targets: (0..n)
                .map(|i| pb::UnusableTarget {
                    route: format!("r{i}"),
                    target: format!("az/team/m{i}"),
                    reason: "r".repeat(10_000),
                })
                .collect(),
            ..Default::default()
        };
        planes.connect(&with(0, 1), None, "s1");
        let dp = &planes.list()[0];
        assert_eq!(dp.unavailable_providers[0].provider, "p0");
        assert_eq!(dp.unusable_targets[0].target, "az/team/m0");
        planes.record("dp", &with(2, 100_000));
        let dp = &planes.list()[0];
        assert_eq!(dp.unavailable_providers.len(), model::MAX_UNAVAILABLE_REPORTED);
        assert_eq!(dp.unusable_targets.len(), model::MAX_UNAVAILABLE_REPORTED);
        let reasons = dp
            .unavailable_providers
            .iter()
            .map(|u| &u.reason)
            .chain(dp.unusable_targets.iter().map(|u| &u.reason));
        assert!(
            reasons
                .into_iter()
                .all(|r| r.len() <= model::MAX_UNAVAILABLE_REASON_LEN)
        );
        planes.record("dp", &with(3, 0));
        let dp = &planes.list()[0];
        assert!(dp.unavailable_providers.is_empty() && dp.unusable_targets.is_empty());
        // The address it reports is informational, and bounded too.
        let huge = pb::WatchRequest {
            http_addr: "9".repeat(1 << 20),
            ..with(4, 0)
        };
        planes.record("dp", &huge);
        assert_eq!(planes.list()[0].http_addr.len(), MAX_HTTP_ADDR_LEN);
        planes.connect(&huge, None, "s1");
        assert_eq!(planes.list()[0].http_addr.len(), MAX_HTTP_ADDR_LEN);
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let s = "é".repeat(10);
        assert_eq!(truncate(&s, 5), "éé");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
