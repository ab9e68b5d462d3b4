//! The planes apart over TLS: a control plane serving gRPC over TLS only, data planes and an
//! admin client reaching it at `https://localhost:PORT` with the CA that issued its
//! certificate. A client that trusts another CA, or speaks plaintext, gets nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_controlplane::GrpcTls;
use drover_proto::pb;
use drover_proto::tls::{CaBundle, Trust};
use drover_tests::gateway::{
    ADMIN_TOKEN, TestControlPlane, TestDataPlane, TestTls, dataplane_config, metric, status, try_admin_client,
};
use drover_tests::{Gateway, MockProvider};

/// Bounds every wait, so a regression fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(15);

/// A CA, and a certificate it issued for `localhost` and 127.0.0.1, written as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn issue(dir: &Path, name: &str) -> Pki {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let pki = Pki {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, leaf.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    fn trust(&self) -> Trust {
        Trust::Ca(CaBundle::load(&self.ca).unwrap())
    }

    fn test_tls(&self) -> TestTls {
        TestTls {
            identity: GrpcTls::load(&self.cert, &self.key).unwrap(),
            trust: self.trust(),
        }
    }
}

fn fast_usage(c: &mut drover_dataplane::Config) {
    c.usage.flush_interval = Duration::from_millis(20);
}

/// The value of a counter on a data plane's `/metrics`.
async fn counter(gw: &Gateway, dp: &TestDataPlane, name: &str) -> u64 {
    metric(&gw.metrics_at(&dp.url()).await, name)
}

#[tokio::test]
async fn a_data_plane_gets_its_policy_and_reports_usage_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue(dir.path(), "cp");
    let up = MockProvider::openai().start().await;
    // Starting waits until the data plane serves the first snapshot, streamed over TLS.
    let gw = Gateway::builder()
        .tls(pki.test_tls())
        .configure(fast_usage)
        .start()
        .await;
    assert!(gw.cp.url().starts_with("https://localhost:"), "{}", gw.cp.url());

    // Policy changes through the admin API over TLS reach the data plane over TLS.
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/gpt-4o-mini"]).await;
    let reply = gw.chat("m", "hello over tls").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-drover-provider"), Some("up"));
    assert_eq!(up.calls(), 1);

    // The usage record travels the usage client's own TLS connection to the ledger.
    assert_eq!(gw.wait_for_usage(1).await.requests, 1);
    let status = gw.status().await;
    assert_eq!(status.dataplanes.len(), 1, "{status:?}");
    assert!(status.dataplanes[0].connected, "{status:?}");
}

#[tokio::test]
async fn a_data_plane_that_does_not_trust_the_certificate_gets_no_policy() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue(dir.path(), "cp");
    let other = Pki::issue(dir.path(), "other");
    let gw = Gateway::builder().tls(pki.test_tls()).dataplanes(0).start().await;

    // Another CA, the default webpki roots, or plaintext to the TLS listener.
    let plaintext = format!("http://{}", gw.cp.addr());
    for (id, url, trust) in [
        ("other-ca", gw.cp.url(), other.trust()),
        ("webpki", gw.cp.url(), Trust::WebPki),
        ("plaintext", plaintext, Trust::WebPki),
    ] {
        let mut config = dataplane_config(&url);
        config.dataplane_id = id.to_owned();
        config.control_plane_trust = trust;
        let dp = TestDataPlane::start(config).await;
        // Two failed attempts: the first is not a fluke of timing.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while counter(&gw, &dp, "drover_policy_connect_failures_total").await < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id}: no connection attempts"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(dp.version(), None, "{id}: no snapshot");
        let ready = gw.send_to(&dp.url(), "GET", "/readyz", &[], "").await;
        assert_eq!(ready.status, 503, "{id}: not ready");
        for never in ["drover_policy_connects_total", "drover_policy_applied_total"] {
            assert_eq!(counter(&gw, &dp, never).await, 0, "{id}: {never}");
        }
        assert!(
            gw.status().await.dataplanes.is_empty(),
            "{id}: the control plane never saw it"
        );
    }
}

#[tokio::test]
async fn the_admin_api_answers_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue(dir.path(), "cp");
    let cp = TestControlPlane::start_tls(&dir.path().join("drover.db"), pki.test_tls()).await;

    // By name and by address: the certificate carries both.
    for url in [cp.url(), format!("https://{}", cp.addr())] {
        let admin = try_admin_client(&url, &pki.trust(), ADMIN_TOKEN).await.unwrap();
        assert!(status(&admin).await.version >= 1, "{url}");
    }

    // Plaintext to the TLS listener fails, at connect or at the first call.
    let plaintext = async {
        let admin = try_admin_client(&format!("http://{}", cp.addr()), &Trust::WebPki, ADMIN_TOKEN)
            .await
            .map_err(|e| e.to_string())?;
        admin
            .clone()
            .status(pb::StatusRequest {})
            .await
            .map_err(|e| e.to_string())
    };
    let answer = tokio::time::timeout(PATIENCE, plaintext)
        .await
        .expect("fails promptly");
    assert!(answer.is_err(), "plaintext got an answer: {answer:?}");

    // TLS with the wrong trust fails at connect.
    let other = Pki::issue(dir.path(), "other");
    for trust in [other.trust(), Trust::WebPki] {
        let refused = try_admin_client(&cp.url(), &trust, ADMIN_TOKEN).await;
        assert!(refused.is_err(), "{trust:?}");
    }

    // And TLS to a plaintext listener fails too.
    let plain = TestControlPlane::start(&dir.path().join("plain.db")).await;
    let answer = tokio::time::timeout(
        PATIENCE,
        try_admin_client(
            &format!("https://localhost:{}", plain.addr().port()),
            &pki.trust(),
            ADMIN_TOKEN,
        ),
    )
    .await
    .expect("fails promptly");
    assert!(answer.is_err());
}

#[tokio::test]
async fn the_data_plane_serves_the_api_over_https_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::issue(dir.path(), "api");
    let server = drover_proto::tls::server_config(
        &pki.cert,
        &pki.key,
        &[drover_proto::tls::ALPN_H2, drover_proto::tls::ALPN_HTTP1],
    )
    .unwrap();
    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder()
        .configure(move |c| c.listener.tls = Some(server.clone()))
        .start()
        .await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/gpt-4o-mini"]).await;
    let port = gw.dps[0].addr().port();

    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://localhost:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(drover_tests::chat_body("m", "hello over https", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-drover-provider"], "up");
    assert_eq!(up.calls(), 1);

    // A client that does not trust the certificate, or speaks plain HTTP, gets nothing.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    assert_eq!(up.calls(), 1);
}
