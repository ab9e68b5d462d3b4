//! The server around the services: start, shutdown and restart, the secrets resolved at start,
//! health and reflection, and connections that never finish their handshake.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use drover_controlplane::{Config, ControlPlane, GrpcTls, StartError, master_key_file_for, token_file_for};
use drover_proto::pb;
use rand::Rng as _;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use common::*;

#[tokio::test]
async fn shutdown_ends_open_streams_and_a_restart_resumes_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let addr = cp.grpc_addr();
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
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    assert_eq!(watcher.next().await.version, 2);

    stop(cp, shutdown).await;
    let end = timeout(PATIENCE, watcher.inbound.message())
        .await
        .expect("stream still open");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");

    let (cp, shutdown) = start(config(dir.path(), addr)).await;
    assert_eq!(cp.grpc_addr(), addr);
    let mut client = admin(&cp).await;
    let again = client
        .status(authed(pb::StatusRequest {}, ADMIN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.store_id, again.version), (status.store_id, 2));
    let mut watcher = Watcher::open(&cp, DATAPLANE, "dp-1", None).await;
    assert_eq!(watcher.next().await.version, 2);
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn the_first_start_creates_the_token_file_and_later_starts_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), loopback());
    cfg.admin_token = None;
    let (cp, shutdown) = start(cfg.clone()).await;
    let token_file = token_file_for(&cfg.db_path);
    assert_eq!(cp.created_token_file(), Some(token_file.as_path()));
    let token = cp.admin_token().clone();
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        token.expose()
    );
    let mut client = admin(&cp).await;
    client
        .status(authed(pb::StatusRequest {}, token.expose()))
        .await
        .unwrap();
    stop(cp, shutdown).await;

    let (cp, shutdown) = start(cfg).await;
    assert_eq!(cp.created_token_file(), None);
    assert_eq!(cp.admin_token(), &token);
    stop(cp, shutdown).await;
}

/// A well-formed master key (base64 of 32 random bytes), not the one the database was created with.
fn another_master_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test]
async fn a_bad_master_key_or_a_missing_key_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), loopback());
    let (cp, shutdown) = start(cfg.clone()).await;
    stop(cp, shutdown).await;

    let mut wrong = cfg.clone();
    wrong.master_key = Some(another_master_key());
    let err = ControlPlane::start(wrong, CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("master key"), "{err}");
    let mut malformed = cfg.clone();
    malformed.master_key = Some("short".into());
    let err = ControlPlane::start(malformed, CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StartError::Config(_)), "{err}");

    std::fs::remove_file(master_key_file_for(&cfg.db_path)).unwrap();
    let err = ControlPlane::start(cfg, CancellationToken::new())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("master key file"), "{err}");
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(config(dir.path(), loopback())).await;
    let url = format!("http://{}", cp.grpc_addr());
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "drover.v1.AdminService",
        "drover.v1.PolicyService",
        "drover.v1.UsageService",
    ] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(response.into_inner().status, 1, "{service} serving");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"drover.v1.AdminService"), "{names:?}");
    assert!(names.contains(&"drover.v1.PolicyService"), "{names:?}");
    assert!(names.contains(&"drover.v1.UsageService"), "{names:?}");
    drop(responses);
    stop(cp, shutdown).await;
}

/// `PRI * HTTP/2.0...`, then an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Reads until the server closes the connection (end of stream or an error).
async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    use tokio::io::AsyncReadExt as _;
    let mut sink = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut sink))
        .await
        .expect("the control plane closes the connection")
        .ok();
}

/// Sends a PING on an HTTP/2 connection past its preface and reads until its ACK.
async fn answers_a_ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ping = b"\0\0\x08\x06\0\0\0\0\0drover!!";
    let ack = b"\0\0\x08\x06\x01\0\0\0\0drover!!";
    stream.write_all(ping).await.unwrap();
    stream.flush().await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(ack.len()).any(|w| w == ack) {
        let n = timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("an answer to the ping")
            .unwrap();
        assert!(n > 0, "the connection was closed after its preface");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn connections_without_a_handshake_in_time_are_closed_and_others_are_kept() {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    let tls = GrpcTls::load(&cert, &key).unwrap();
    let handshake_timeout = Duration::from_millis(200);
    let mut cfg = config(dir.path(), loopback());
    cfg.handshake_timeout = handshake_timeout;

    // Plaintext: nothing, or half a preface, is closed; a whole preface is served past
    // the deadline.
    let (cp, shutdown) = start(cfg.clone()).await;
    let mut silent = TcpStream::connect(cp.grpc_addr()).await.unwrap();
    let mut partial = TcpStream::connect(cp.grpc_addr()).await.unwrap();
    partial.write_all(&PREFACE[..10]).await.unwrap();
    let mut served = TcpStream::connect(cp.grpc_addr()).await.unwrap();
    served.write_all(PREFACE).await.unwrap();
    closed(&mut silent).await;
    closed(&mut partial).await;
    tokio::time::sleep(handshake_timeout * 3).await;
    answers_a_ping(&mut served).await;
    drop(served);
    stop(cp, shutdown).await;

    // TLS: no ClientHello, or a handshake and then no preface, is closed.
    let (cp, shutdown) = start(Config {
        tls: Some(tls.clone()),
        ..cfg
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(issued.cert.der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(drover_proto::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut silent = TcpStream::connect(cp.grpc_addr()).await.unwrap();
    let tcp = TcpStream::connect(cp.grpc_addr()).await.unwrap();
    let mut no_preface = connector.connect(name.clone(), tcp).await.unwrap();
    let tcp = TcpStream::connect(cp.grpc_addr()).await.unwrap();
    let mut served = connector.connect(name, tcp).await.unwrap();
    assert_eq!(served.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    served.write_all(PREFACE).await.unwrap();
    closed(&mut silent).await;
    closed(&mut no_preface).await;
    tokio::time::sleep(handshake_timeout * 3).await;
    answers_a_ping(&mut served).await;
    drop(served);
    stop(cp, shutdown).await;
}
