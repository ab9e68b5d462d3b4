//! The admin API from Python: runs `docs/examples/admin_api.py` (grpcio, stubs generated from
//! the proto files) against an in-process gateway.
//!
//! The Python packages (`grpcio`, `grpcio-tools`, `grpcio-status`) are installed with pip into
//! `$CARGO_TARGET_TMPDIR/python-deps` on the first run and reused afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use drover_tests::gateway::ADMIN_TOKEN;
use drover_tests::{Gateway, MockProvider};

const PACKAGES: &[&str] = &["grpcio", "grpcio-tools", "grpcio-status"];
/// Imports that succeed only when every package in `PACKAGES` (and its dependencies) is usable.
const IMPORTS: &str = "import grpc, grpc_tools.protoc, grpc_status.rpc_status, google.rpc.error_details_pb2";
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

/// What a finished process wrote.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with stdout and stderr in temporary files, polling so the runtime
/// (and the gateway on it) keeps running; kills it and panics after `timeout`.
async fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            child.kill().ok();
            let status = child.wait().unwrap();
            let output = Output {
                status,
                stdout: read_all(&mut out),
                stderr: read_all(&mut err),
            };
            panic!("{cmd:?} did not finish in {timeout:?}: {}", output.describe());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Output {
        status,
        stdout: read_all(&mut out),
        stderr: read_all(&mut err),
    }
}

fn read_all(file: &mut File) -> String {
    file.rewind().unwrap();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn python() -> Command {
    let mut cmd = Command::new("python3");
    // Loopback calls from the script must not go through a proxy from the environment.
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "grpc_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Whether `dir` holds a usable install of `PACKAGES`.
async fn has_packages(dir: &Path) -> bool {
    dir.is_dir()
        && run(
            python().env("PYTHONPATH", dir).args(["-c", IMPORTS]),
            PYTHON_TIMEOUT,
        )
        .await
        .status
        .success()
}

/// The directory holding `PACKAGES`, installed there with pip unless it already holds them.
///
/// pip installs into a fresh directory beside it that is then renamed into place, so a test
/// process never sees a partial install; when another process renamed its install first, that
/// one is used.
async fn python_deps() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let deps = tmp.join("python-deps");
    if has_packages(&deps).await {
        return deps;
    }
    std::fs::create_dir_all(tmp).unwrap();
    if deps.exists() {
        // A directory that does not import (e.g. installed for another Python) is replaced.
        let stale = tmp.join(format!("python-deps-stale-{}", std::process::id()));
        if std::fs::rename(&deps, &stale).is_ok() {
            std::fs::remove_dir_all(&stale).ok();
        }
    }
    let staging = tempfile::Builder::new()
        .prefix("python-deps-install-")
        .tempdir_in(tmp)
        .unwrap();
    let pip = run(
        python()
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--target",
            ])
            .arg(staging.path())
            .args(PACKAGES),
        PIP_TIMEOUT,
    )
    .await;
    assert!(
        pip.status.success(),
        "pip install {PACKAGES:?} failed: {}",
        pip.describe()
    );
    let staging = staging.keep();
    if std::fs::rename(&staging, &deps).is_err() {
        // `deps` exists: another process's install got there first.
        std::fs::remove_dir_all(&staging).ok();
        assert!(
            has_packages(&deps).await,
            "{} exists but does not import the packages",
            deps.display()
        );
    }
    deps
}

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
