//! The admin API from Python: runs `docs/examples/admin_api.py` (grpcio, stubs generated from
//! the proto files) against an in-process gateway.
//!
//! The Python packages (`grpcio`, `grpcio-tools`, `grpcio-status`) are installed with pip into
//! `$CARGO_TARGET_TMPDIR/python-deps` on the first run and reused afterwards (see `python/mod.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod python;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use drover_tests::gateway::ADMIN_TOKEN;
use drover_tests::{Gateway, MockProvider};
use python::{PYTHON_TIMEOUT, python, python_deps, repo_root, run};

/// Generates the Python message and gRPC stubs of `proto/proto/drover/v1/*.proto` into `out`.
async fn generate_stubs(deps: &Path, out: &Path) {
    let root = repo_root();
    let include = root.join("proto/proto");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(include.join("drover/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    assert!(!protos.is_empty(), "no proto files under {}", include.display());
    let mut python_out = OsString::from("--python_out=");
    python_out.push(out);
    let mut grpc_out = OsString::from("--grpc_python_out=");
    grpc_out.push(out);
    let protoc = run(
        python()
            .env("PYTHONPATH", deps)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&include)
            .arg(python_out)
            .arg(grpc_out)
            .args(&protos),
        PYTHON_TIMEOUT,
    )
    .await;
    assert!(
        protoc.status.success(),
        "grpc_tools.protoc failed: {}",
        protoc.describe()
    );
    assert!(
        out.join("drover/v1/admin_pb2_grpc.py").is_file(),
        "no admin stubs in {}",
        out.display()
    );
}

#[tokio::test]
async fn the_python_admin_example_manages_a_key_end_to_end() {
    let deps = python_deps().await;
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(&deps, stubs.path()).await;

    let up = MockProvider::openai().start().await;
    let gw = Gateway::builder().start().await;
    gw.provider("up", &up.base_url()).await;
    gw.route("m", &["up/one"]).await;

    let script = repo_root().join("docs/examples/admin_api.py");
    let pythonpath = std::env::join_paths([deps.as_path(), stubs.path()]).unwrap();
    let example = run(
        python()
            .arg(&script)
            .env("PYTHONPATH", pythonpath)
            .env("DROVER_GRPC", gw.cp.addr().to_string())
            .env("DROVER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("DROVER_DATAPLANE", gw.url()),
        PYTHON_TIMEOUT,
    )
    .await;
    let report = example.describe();
    assert!(example.status.success(), "admin_api.py failed: {report}");
    for line in [
        "retried CreateTenant with the same request_id: same answer",
        "auth module on at version",
        "chat with the key: HTTP 200",
        "chat with the revoked key: HTTP 401 invalid_api_key",
        "INVALID_ARGUMENT field violation: name: ",
    ] {
        assert!(example.stdout.contains(line), "no line {line:?}: {report}");
    }

    // The script's changes are in this gateway: auth is on, so a call without a key is refused.
    assert_eq!(gw.chat("m", "hi").await.status, 401);
}
