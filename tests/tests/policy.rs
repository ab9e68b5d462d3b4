//! The policy stream end to end: changes reach running data planes, outages of the control
//! plane leave them serving, a rejected snapshot leaves the old one in place.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::time::Duration;

use drover_proto::pb;
use drover_tests::gateway::{TestDataPlane, dataplane_config};
use drover_tests::{Gateway, MockProvider};
use tokio::sync::mpsc;

#[tokio::test]
async fn a_route_change_reaches_a_running_data_plane_without_restart() {
    let a = MockProvider::openai().start().await;
    let b = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("a", &a.base_url()).await;
    gw.provider("b", &b.base_url()).await;

    assert_eq!(gw.chat("m", "x").await.status, 404, "no such alias yet");
    gw.route("m", &["a/one"]).await;
    assert_eq!(gw.chat("m", "x").await.header("x-drover-provider"), Some("a"));
    gw.route("m", &["b/two"]).await;
    let reply = gw.chat("m", "x").await;
    assert_eq!(reply.header("x-drover-provider"), Some("b"));
    assert_eq!(reply.json()["model"], "two");

    gw.remove_route("m").await;
    assert_eq!(gw.chat("m", "x").await.status, 404);
}

#[tokio::test]
async fn data_plane_is_not_ready_until_a_snapshot_is_applied() {
    // A control plane address with nothing behind it.
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dp = TestDataPlane::start(dataplane_config(&format!("http://{nothing}"))).await;
    let client = reqwest::Client::new();
    let ready = client.get(format!("{}/readyz", dp.url())).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = client.get(format!("{}/healthz", dp.url())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let chat = client
        .post(format!("{}/v1/chat/completions", dp.url()))
        .header("content-type", "application/json")
        .body(drover_tests::chat_body("m", "x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 503);
    assert!(chat.headers().contains_key("retry-after"));
    let body: serde_json::Value = chat.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
}

#[tokio::test]
async fn control_plane_restart_keeps_traffic_flowing_and_the_data_plane_reconnects() {
    let up = MockProvider::openai().start().await;
    let mut gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    let before = gw.route("m", &["up/one"]).await;

    gw.cp.kill().await;
    // The data plane keeps serving its last policy while the control plane is away.
    for _ in 0..5 {
        let reply = gw.chat("m", "x").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["model"], "one");
    }
    let ready = gw.send("GET", "/readyz", "").await;
    assert_eq!(ready.status, 200);

    gw.cp.restart().await;
    gw.admin = gw.cp.admin().await;
    assert_eq!(gw.version().await, before, "the version survives the restart");
    // A change made after the restart reaches the data plane over the new stream.
    let after = gw.route("m", &["up/two"]).await;
    assert!(after > before);
    assert_eq!(gw.chat("m", "x").await.json()["model"], "two");

    let status = gw.status().await;
    let dp = status
        .dataplanes
        .iter()
        .find(|d| d.id == "dp-0")
        .expect("data plane registered again");
    assert!(dp.connected);
    assert_eq!(dp.served_version, after);
}

/// A control plane that sends the snapshots a test hands it, and hands back what the data plane
/// answers: for snapshots the admin API could never produce.
struct ScriptedControlPlane {
    snapshots: std::sync::Mutex<Option<mpsc::Receiver<pb::Snapshot>>>,
    answers: mpsc::Sender<pb::WatchRequest>,
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::Snapshot, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for ScriptedControlPlane {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: tonic::Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<tonic::Response<SnapshotStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let _ = answers.send(msg).await;
            }
        });
        let snapshots = self.snapshots.lock().unwrap().take().expect("one stream");
        let stream =
            futures_util::stream::unfold(
                snapshots,
                |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) },
            );
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

fn snapshot(version: u64, up: &MockProvider, route: (&str, &str, &str)) -> pb::Snapshot {
    pb::Snapshot {
        store_id: "scripted".into(),
        version,
        providers: vec![pb::Provider {
            name: "up".into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: up.base_url(),
            credential: None,
            api_version: String::new(),
            responses_api: 0,
        }],
        routes: vec![pb::Route {
            alias: route.0.into(),
            strategy: 0,
            targets: vec![pb::Target {
                provider: route.1.into(),
                model: route.2.into(),
                weight: 1,
            }],
            cache_ttl_secs: 0,
            retry_after_send: false,
        }],
        prices: vec![],
        modules: vec![],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_rejected_snapshot_leaves_the_old_policy_serving() {
    let up = MockProvider::openai().start().await;
    let (snapshots, rx) = mpsc::channel(4);
    let (answers, mut answered) = mpsc::channel(16);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ScriptedControlPlane {
        snapshots: std::sync::Mutex::new(Some(rx)),
        answers,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::policy_service_server::PolicyServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let dp = TestDataPlane::start(dataplane_config(&format!("http://{addr}"))).await;
    let mut next_answer = async || {
        tokio::time::timeout(Duration::from_secs(10), answered.recv())
            .await
            .expect("the data plane answers")
            .expect("stream open")
    };
    let hello = next_answer().await;
    assert_eq!(hello.response_version, 0);

    snapshots
        .send(snapshot(1, &up, ("m", "up", "one")))
        .await
        .unwrap();
    let ack = next_answer().await;
    assert_eq!(
        (ack.response_version, ack.error.as_str(), ack.version),
        (1, "", 1)
    );

    // A snapshot that is not valid policy (a route to a provider it does not define) is NACKed
    // with why, and the old one keeps serving.
    snapshots
        .send(snapshot(2, &up, ("m", "ghost", "two")))
        .await
        .unwrap();
    let nack = next_answer().await;
    assert_eq!((nack.response_version, nack.version), (2, 1));
    assert!(
        nack.error.contains("unknown provider \"ghost\""),
        "{}",
        nack.error
    );
    assert_eq!(dp.version(), Some(1));
    let body = drover_tests::chat_body("m", "x", false);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let post = |body: String| {
        let request = http::Request::post(format!("{}/v1/chat/completions", dp.url()))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        client.request(request)
    };
    let reply = post(body.clone()).await.unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(up.last_json().unwrap()["model"], "one", "old policy still serves");
    let metrics = client
        .get(format!("{}/metrics", dp.url()).parse().unwrap())
        .await
        .unwrap();
    let metrics = http_body_util::BodyExt::collect(metrics.into_body())
        .await
        .unwrap()
        .to_bytes();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("drover_policy_rejected_total 1"), "{metrics}");

    // The next valid snapshot goes through.
    snapshots
        .send(snapshot(3, &up, ("m", "up", "three")))
        .await
        .unwrap();
    let ack = next_answer().await;
    assert_eq!(
        (ack.response_version, ack.error.as_str(), ack.version),
        (3, "", 3)
    );
    assert_eq!(post(body).await.unwrap().status(), 200);
    assert_eq!(up.last_json().unwrap()["model"], "three");
}

#[tokio::test]
async fn two_data_planes_on_one_control_plane_both_follow_changes() {
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().dataplanes(2).start().await;
    gw.provider("up", &up.base_url()).await;
    let v = gw.route("m", &["up/one"]).await;
    for dp in &gw.dps {
        let reply = gw
            .send_to(
                &dp.url(),
                "POST",
                "/v1/chat/completions",
                &[],
                drover_tests::chat_body("m", "x", false),
            )
            .await;
        assert_eq!(reply.json()["model"], "one");
    }
    gw.route("m", &["up/two"]).await;
    for dp in &gw.dps {
        let reply = gw
            .send_to(
                &dp.url(),
                "POST",
                "/v1/chat/completions",
                &[],
                drover_tests::chat_body("m", "x", false),
            )
            .await;
        assert_eq!(reply.json()["model"], "two");
    }
    let status = gw.status().await;
    let mut ids: Vec<_> = status
        .dataplanes
        .iter()
        .filter(|d| d.connected)
        .map(|d| d.id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["dp-0", "dp-1"]);
    assert!(status.dataplanes.iter().all(|d| d.served_version > v));
    assert!(
        status
            .dataplanes
            .iter()
            .any(|d| d.http_addr == gw.dps[1].addr().to_string())
    );
}

#[tokio::test]
async fn a_data_plane_starts_from_its_last_good_file_when_the_control_plane_is_down() {
    let up = MockProvider::openai().start().await;
    let dir = tempfile::tempdir().unwrap();
    let last_good = dir.path().join("policy.bin");
    let mut gw = Gateway::builder()
        .configure({
            let last_good = last_good.clone();
            move |c| c.last_good = Some(last_good.clone())
        })
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    let v = gw.route("m", &["up/one"]).await;
    // The file is written after the ACK; wait for it to hold version v.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&last_good).map(|m| m.len()).unwrap_or(0) == 0
        || prost::Message::decode(std::fs::read(&last_good).unwrap().as_slice())
            .map(|s: pb::Snapshot| s.version)
            .unwrap_or(0)
            < v
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gw.cp.kill().await;
    gw.dps[0].stop().await;

    let mut config = dataplane_config(&gw.cp.url());
    config.last_good = Some(last_good.clone());
    let dp = TestDataPlane::start(config).await;
    assert_eq!(dp.version(), Some(v), "serves the last-good policy at once");
    let reply = gw
        .send_to(
            &dp.url(),
            "POST",
            "/v1/chat/completions",
            &[],
            drover_tests::chat_body("m", "x", false),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["model"], "one");
}

/// Tenant and key changes travel as deltas: the data planes move to each new version, keep
/// their routes, and one restarted from its last-good file catches up from the version it had.
#[tokio::test]
async fn key_changes_reach_data_planes_as_deltas_and_keep_the_routes() {
    let up = MockProvider::openai().start().await;
    let dir = tempfile::tempdir().unwrap();
    let last_good = dir.path().join("policy.bin");
    let mut gw = Gateway::builder()
        .dataplanes(2)
        .configure({
            let last_good = last_good.clone();
            move |c| c.last_good = Some(last_good.clone())
        })
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    let v = gw.route("m", &["up/one"]).await;
    gw.wait_all(v).await;

    let mut admin = gw.cp.admin().await;
    admin
        .create_tenant(pb::CreateTenantRequest {
            name: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = admin
        .create_key(pb::CreateKeyRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    gw.wait_all(key.version).await;
    for dp in &gw.dps {
        let reply = gw
            .send_to(
                &dp.url(),
                "POST",
                "/v1/chat/completions",
                &[],
                drover_tests::chat_body("m", "x", false),
            )
            .await;
        assert_eq!(reply.status, 200, "the routes survive a delta: {}", reply.text());
    }
    let key_id = key.key.unwrap().id;
    let on_disk = |path: &std::path::Path| -> pb::Snapshot {
        prost::Message::decode(std::fs::read(path).unwrap_or_default().as_slice()).unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while on_disk(&last_good).version < key.version {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last-good file follows deltas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let saved = on_disk(&last_good);
    assert_eq!(
        (saved.base_version, saved.config_unchanged),
        (0, false),
        "saved complete"
    );
    assert_eq!(saved.keys.len(), 1);
    assert_eq!(saved.routes.len(), 1);

    // One data plane goes away; the key is revoked and a route changes meanwhile.
    gw.dps[1].stop().await;
    admin
        .revoke_key(pb::RevokeKeyRequest { id: key_id })
        .await
        .unwrap();
    let v = gw.route("m", &["up/two"]).await;
    // Restarted from its last-good file, it catches up with both changes.
    let mut config = dataplane_config(&gw.cp.url());
    config.last_good = Some(last_good.clone());
    let dp = TestDataPlane::start(config).await;
    dp.wait_for_version(v).await;
    let reply = gw
        .send_to(
            &dp.url(),
            "POST",
            "/v1/chat/completions",
            &[],
            drover_tests::chat_body("m", "x", false),
        )
        .await;
    assert_eq!(reply.json()["model"], "two");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while on_disk(&last_good).version < v {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(on_disk(&last_good).keys.is_empty(), "the revoked key is gone");
}
