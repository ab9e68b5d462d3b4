//! The policy stream end to end: a data plane's hello, the snapshots it is sent, its ACKs and
//! NACKs, and what Status shows of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use drover_proto::pb;
use drover_proto::pb::policy_service_client::PolicyServiceClient;
use tokio::time::timeout;
use tonic::Code;

use common::*;

#[tokio::test]
async fn status_shows_the_providers_a_data_plane_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    let report = |version: u64, error: &str, unavailable: &[(&str, &str)]| pb::WatchRequest {
        dataplane_id: "dp-1".into(),
        response_version: version,
        error: error.into(),
        unavailable_providers: unavailable
            .iter()
            .map(|(p, r)| pb::UnavailableProvider {
                provider: (*p).into(),
                reason: (*r).into(),
            })
            .collect(),
        ..Default::default()
    };
    let reason = "environment variable GROQ_API_KEY is not set on this data plane";
    watcher.tx.send(report(1, "", &[("groq", reason)])).await.unwrap();
    let dp = await_dataplane(&mut client, "dp-1", |d| !d.unavailable_providers.is_empty()).await;
    assert_eq!(
        dp.unavailable_providers,
        [pb::UnavailableProvider {
            provider: "groq".into(),
            reason: reason.into(),
        }]
    );
    assert_eq!((dp.served_version, dp.last_error.as_str()), (1, ""));
    // Every message describes the snapshot served now; a later one without any clears it.
    watcher.tx.send(report(1, "", &[])).await.unwrap();
    await_dataplane(&mut client, "dp-1", |d| d.unavailable_providers.is_empty()).await;
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn watch_sends_the_current_snapshot_then_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    let first = watcher.next().await;
    assert_eq!(first.version, 1);
    assert_eq!(first.modules.len(), 5);

    client
        .set_price(authed(set_price("my-model", 3.0), ADMIN))
        .await
        .unwrap();
    let second = watcher.next().await;
    assert_eq!(
        (second.store_id.as_str(), second.version),
        (first.store_id.as_str(), 2)
    );
    assert!(
        second
            .prices
            .iter()
            .any(|p| p.model == "my-model" && p.input_per_mtok == 3.0)
    );

    // ACK, then NACK, then ACK again: Status shows each.
    watcher.answer(2, "").await;
    let dp = await_dataplane(&mut client, "dp-1", |d| d.served_version == 2).await;
    assert!(dp.connected);
    assert_eq!(dp.http_addr, "127.0.0.1:8080");
    assert!(dp.peer.starts_with("127.0.0.1:"));
    assert!(dp.last_seen_unix_ms > 0);

    client
        .add_provider(authed(add_provider("openai"), ADMIN))
        .await
        .unwrap();
    assert_eq!(watcher.next().await.version, 3);
    watcher.answer(3, "provider openai: no such env var").await;
    let dp = await_dataplane(&mut client, "dp-1", |d| d.rejected_version == 3).await;
    assert_eq!(
        (dp.served_version, dp.last_error.as_str()),
        (2, "provider openai: no such env var")
    );

    client
        .set_price(authed(set_price("my-model", 4.0), ADMIN))
        .await
        .unwrap();
    assert_eq!(watcher.next().await.version, 4);
    watcher.answer(4, "").await;
    let dp = await_dataplane(&mut client, "dp-1", |d| d.served_version == 4).await;
    assert_eq!((dp.rejected_version, dp.last_error.as_str()), (0, ""));

    // Closing the stream marks the data plane disconnected.
    drop(watcher);
    await_dataplane(&mut client, "dp-1", |d| !d.connected).await;
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_hello_at_the_current_version_gets_nothing_until_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = admin(&cp).await;
    client
        .set_price(authed(set_price("my-model", 3.0), ADMIN))
        .await
        .unwrap();
    let status = client
        .status(authed(pb::StatusRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.version, 2);

    let mut current = Watcher::open(&cp, DATAPLANE, "dp-current", Some((&status.store_id, 2))).await;
    // It counts as serving version 2 straight away.
    await_dataplane(&mut client, "dp-current", |d| {
        d.served_version == 2 && d.connected
    })
    .await;
    // An old version, or another store's, gets the current snapshot at once.
    let mut old = Watcher::open(&cp, DATAPLANE, "dp-old", Some((&status.store_id, 1))).await;
    assert_eq!(old.next().await.version, 2);
    let mut foreign = Watcher::open(&cp, DATAPLANE, "dp-foreign", Some(("other-store", 2))).await;
    assert_eq!(foreign.next().await.version, 2);

    client
        .set_price(authed(set_price("my-model", 4.0), ADMIN))
        .await
        .unwrap();
    // Streams are ordered: had version 2 been sent, it would arrive before 3.
    assert_eq!(current.next().await.version, 3);
    assert_eq!(old.next().await.version, 3);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_stream_without_a_hello_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let mut client = PolicyServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap();
    let ack_first = pb::WatchRequest {
        dataplane_id: "dp".into(),
        response_version: 3,
        ..Default::default()
    };
    let no_id = pb::WatchRequest::default();
    for first in [ack_first, no_id] {
        let stream = tokio_stream::iter([first]);
        let mut inbound = client
            .watch(authed(stream, DATAPLANE))
            .await
            .unwrap()
            .into_inner();
        let err = timeout(PATIENCE, inbound.message()).await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    stop(cp, shutdown).await;
}
