//! Running Python from the integration tests: the packages they need, installed with pip into
//! `$CARGO_TARGET_TMPDIR/python-deps` on the first run and reused afterwards, and a way to run
//! a process without blocking the runtime the gateway under test runs on.
//!
//! Shared by the test files that use it through `mod python;`.

use std::fs::File;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// Every package any Python test needs: the admin example's gRPC client and the official
/// OpenAI and Anthropic SDKs.
const PACKAGES: &[&str] = &["grpcio", "grpcio-tools", "grpcio-status", "openai", "anthropic"];
/// Imports that succeed only when every package in `PACKAGES` (and its dependencies) is usable;
/// a directory installed before a package was added to the list fails them and is replaced.
const IMPORTS: &str = "import grpc, grpc_tools.protoc, grpc_status.rpc_status, \
                       google.rpc.error_details_pb2, openai, anthropic";
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a Python script of a test may run.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

/// What a finished process wrote.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with stdout and stderr in temporary files, polling so the runtime
/// (and the gateway on it) keeps running; kills it and panics after `timeout`.
pub async fn run(cmd: &mut Command, timeout: Duration) -> Output {
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

/// Settings the OpenAI and Anthropic SDKs read from the environment that would change what a
/// script sends.
const SDK_ENV: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_LOG",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
];

/// `python3`, without the proxy settings of the environment or the SDKs' own settings.
pub fn python() -> Command {
    let mut cmd = Command::new("python3");
    for var in SDK_ENV {
        cmd.env_remove(var);
    }
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
pub async fn python_deps() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let deps = tmp.join("python-deps");
    if has_packages(&deps).await {
        return deps;
    }
    std::fs::create_dir_all(tmp).unwrap();
    if deps.exists() {
        // A directory that does not import (e.g. installed for another Python, or before a
        // package was added to `PACKAGES`) is replaced.
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
