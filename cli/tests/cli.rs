//! The `drover` binary end to end: each test runs the real executable against a control plane
//! started in this process on 127.0.0.1:0 (or against `drover serve` as a child process), with
//! its database in a tempdir, and checks what a user relies on: what is printed on stdout, that a
//! failure is one `error:` line on stderr with a non-zero exit, and what the server holds
//! afterwards, read back through the CLI's own `--json` lists.
//!
//! Every child gets a cleared environment and an empty working directory, so neither the
//! host's `DROVER_*` variables nor a `drover.admin-token` in the current directory can leak in.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a setup that fails must fail the test that asked for it"
)]
#![allow(
    clippy::disallowed_types,
    reason = "drives real drover processes and waits on the wall clock, which no test runtime can pause"
)]

use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use drover_controlplane::{Config, ControlPlane, GrpcTls, token_file_for};
use drover_proto::pb;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The admin token of the control planes these tests start.
const TOKEN: &str = "cli-test-admin-token";
/// How long one `drover` command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `drover serve` may take to become ready, and to stop.
const SERVE_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A control plane in this process, on 127.0.0.1:0, with its database in a tempdir.
struct TestControlPlane {
    dir: TempDir,
    db: PathBuf,
    url: String,
    created_token_file: Option<PathBuf>,
    shutdown: CancellationToken,
    _running: ControlPlane,
}

impl TestControlPlane {
    /// Started with the admin token `TOKEN`.
    async fn start() -> Self {
        Self::start_with(Some(TOKEN)).await
    }

    /// `None`: the control plane creates its own token, in a file beside the database.
    async fn start_with(admin_token: Option<&str>) -> Self {
        Self::start_serving(admin_token, false).await
    }

    /// Serving gRPC over TLS only, with a certificate for 127.0.0.1 issued by the CA in
    /// `ca_file()`; `url` is `https://127.0.0.1:PORT`.
    async fn start_tls() -> Self {
        Self::start_serving(Some(TOKEN), true).await
    }

    async fn start_serving(admin_token: Option<&str>, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("cwd")).expect("working directory");
        let db = dir.path().join("state").join("drover.db");
        let shutdown = CancellationToken::new();
        let config = Config {
            db_path: db.clone(),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_token: admin_token.map(str::to_owned),
            dataplane_token: None,
            master_key: None,
            usage_retention: None,
            audit_retention: None,
            tls: tls.then(|| {
                let pki = Pki::issue(dir.path());
                GrpcTls::load(&pki.cert, &pki.key).expect("TLS identity")
            }),
            handshake_timeout: drover_controlplane::DEFAULT_HANDSHAKE_TIMEOUT,
            leases: drover_controlplane::LeaseTiming::default(),
        };
        let scheme = if tls { "https" } else { "http" };
        let running = ControlPlane::start(config, shutdown.clone())
            .await
            .expect("control plane starts");
        TestControlPlane {
            url: format!("{scheme}://{}", running.grpc_addr()),
            created_token_file: running.created_token_file().map(Path::to_owned),
            dir,
            db,
            shutdown,
            _running: running,
        }
    }

    /// The CA that issued a TLS control plane's certificate.
    fn ca_file(&self) -> PathBuf {
        Pki::in_dir(self.dir.path()).ca
    }

    /// `drover --server URL`, without a token: its directory holds no token file.
    fn drover_without_token(&self) -> Drover {
        Drover::new(&self.dir.path().join("cwd")).args(["--server", &self.url])
    }

    /// `drover --server URL` with `DROVER_ADMIN_TOKEN` set to the right token.
    fn drover(&self) -> Drover {
        self.drover_without_token().env("DROVER_ADMIN_TOKEN", TOKEN)
    }

    /// Runs `drover ARGS` with the right token.
    async fn run(&self, args: &[&str]) -> Output {
        self.drover().args(args).run().await
    }

    /// Runs a list command (`--json` is added) and parses what it prints.
    async fn list(&self, args: &[&str]) -> Value {
        let out = self.drover().args(args).arg("--json").run().await;
        parse_json(out.ok(), &out)
    }

    /// The current policy version, from `drover status --json`.
    async fn version(&self) -> u64 {
        self.list(&["status"]).await["version"]
            .as_u64()
            .expect("status --json has a version")
    }

    /// Everything the admin API can show, read through the CLI: to prove a failed command
    /// changed nothing.
    async fn state(&self) -> Value {
        json!({
            "version": self.version().await,
            "providers": self.list(&["provider", "list"]).await,
            "routes": self.list(&["route", "list"]).await,
            "prices": self.list(&["price", "list"]).await,
            "modules": self.list(&["module", "list"]).await,
        })
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A test CA and a certificate it issued for `localhost` and 127.0.0.1, as PEM files in a
/// directory.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn in_dir(dir: &Path) -> Pki {
        Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    fn issue(dir: &Path) -> Pki {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("certificate");
        let pki = Pki::in_dir(dir);
        std::fs::write(&pki.ca, ca.pem()).expect("write CA");
        std::fs::write(&pki.cert, leaf.pem()).expect("write certificate");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }
}

/// One `drover` invocation: the real binary, a cleared environment, an empty working directory.
struct Drover {
    cmd: Command,
    args: Vec<String>,
    stdin: Option<String>,
}

impl Drover {
    fn new(cwd: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
        cmd.env_clear().current_dir(cwd);
        Drover {
            cmd,
            args: Vec::new(),
            stdin: None,
        }
    }

    fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    fn args(self, args: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        args.into_iter().fold(self, |d, a| d.arg(a.as_ref()))
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.cmd.env(name, value);
        self
    }

    /// What the command reads on stdin (otherwise stdin is empty).
    fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_owned());
        self
    }

    async fn run(self) -> Output {
        let Drover { mut cmd, args, stdin } = self;
        cmd.args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = args.join(" ");
        let blocking = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("drover starts");
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(text.as_bytes()).expect("write stdin");
            }
            child.wait_with_output().expect("drover runs")
        });
        let out = tokio::time::timeout(COMMAND_TIMEOUT, blocking)
            .await
            .unwrap_or_else(|_| panic!("`drover {shown}` did not finish within {COMMAND_TIMEOUT:?}"))
            .expect("join");
        Output {
            args: shown,
            status: out.status,
            stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        }
    }
}

/// What one `drover` invocation did.
struct Output {
    args: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`drover {}` exited with {}\n--- stdout\n{}--- stderr\n{}---",
            self.args, self.status, self.stdout, self.stderr
        )
    }
}

impl Output {
    /// Asserts success with nothing on stderr; returns stdout.
    #[track_caller]
    fn ok(&self) -> &str {
        assert!(
            self.status.success() && self.stderr.is_empty(),
            "expected success:\n{self}"
        );
        &self.stdout
    }

    /// Asserts a failure as every command reports one: exit 1, nothing on stdout and exactly
    /// one line on stderr, `error: ...`. Returns the message after `error: `.
    #[track_caller]
    fn error(&self) -> &str {
        assert_eq!(self.status.code(), Some(1), "expected exit code 1:\n{self}");
        assert!(self.stdout.is_empty(), "nothing on stdout on failure:\n{self}");
        let line = self
            .stderr
            .strip_suffix('\n')
            .filter(|l| !l.contains('\n'))
            .unwrap_or_else(|| panic!("expected exactly one line on stderr:\n{self}"));
        line.strip_prefix("error: ")
            .unwrap_or_else(|| panic!("the line starts with `error: `:\n{self}"))
    }

    /// Asserts a usage error: exit 2, nothing on stdout, and one `error: ...` line first on
    /// stderr; what may follow is clap's usage and `--help` hint, never a second error.
    /// Returns the message after `error: `.
    #[track_caller]
    fn usage_error(&self) -> &str {
        assert_eq!(self.status.code(), Some(2), "expected exit code 2:\n{self}");
        assert!(self.stdout.is_empty(), "nothing on stdout on failure:\n{self}");
        let mut lines = self.stderr.lines();
        let first = lines.next().unwrap_or_default();
        let rest: Vec<&str> = lines.collect();
        assert!(
            rest.iter().all(|l| !l.contains("error")),
            "one error line:\n{self}"
        );
        first
            .strip_prefix("error: ")
            .unwrap_or_else(|| panic!("stderr starts with `error: `:\n{self}"))
    }
}

#[track_caller]
fn parse_json(text: &str, out: &Output) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}

/// The version in `... (policy version N)`, the line every change prints.
#[track_caller]
fn changed_version(stdout: &str, what: &str) -> u64 {
    let version = stdout
        .strip_prefix(what)
        .and_then(|rest| rest.strip_prefix(" (policy version "))
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("expected `{what} (policy version N)`, got {stdout:?}"));
    version
        .parse()
        .unwrap_or_else(|_| panic!("policy version {version:?} is a number"))
}

/// A loopback port nothing listens on any more: bound, read and released.
fn closed_port() -> u16 {
    free_addr().port()
}

// ---------------------------------------------------------------------------------------------
// Providers, routes, prices, modules, status
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn providers_are_added_listed_and_removed_without_showing_a_key() {
    let cp = TestControlPlane::start().await;
    let secret = "sk-ant-never-print-me-0123456789";
    let mut outputs = Vec::new();
    let start = cp.version().await;

    let out = cp
        .run(&[
            "provider",
            "add",
            "openai",
            "--kind",
            "openai",
            "--base-url",
            "https://api.openai.com/v1/",
            "--api-key-env",
            "OPENAI_API_KEY",
        ])
        .await;
    assert_eq!(changed_version(out.ok(), "provider openai added"), start + 1);
    outputs.push(out);

    let out = cp
        .drover()
        .args([
            "provider",
            "add",
            "anthropic",
            "--kind",
            "anthropic",
            "--base-url",
            "https://api.anthropic.com",
            "--api-key",
            "-",
        ])
        .stdin(&format!("{secret}\n"))
        .run()
        .await;
    assert_eq!(changed_version(out.ok(), "provider anthropic added"), start + 2);
    outputs.push(out);

    let out = cp
        .run(&[
            "provider",
            "add",
            "azure",
            "--kind",
            "azure",
            "--base-url",
            "https://res.openai.azure.com",
            "--api-version",
            "2024-10-21",
            "--api-key-env",
            "AZURE_OPENAI_API_KEY",
            "--responses-api",
            "translate",
        ])
        .await;
    assert_eq!(changed_version(out.ok(), "provider azure added"), start + 3);
    outputs.push(out);

    let listed = cp.list(&["provider", "list"]).await;
    assert_eq!(
        listed,
        json!([
            {
                "name": "anthropic",
                "kind": "anthropic",
                "base_url": "https://api.anthropic.com/",
                "credential": "stored",
                "api_version": null,
                "responses_api": null,
            },
            {
                "name": "azure",
                "kind": "azure",
                "base_url": "https://res.openai.azure.com/",
                "credential": "env:AZURE_OPENAI_API_KEY",
                "api_version": "2024-10-21",
                "responses_api": "translate",
            },
            {
                "name": "openai",
                "kind": "openai",
                "base_url": "https://api.openai.com/v1",
                "credential": "env:OPENAI_API_KEY",
                "api_version": null,
                "responses_api": "relay",
            },
        ])
    );
    let table = cp.run(&["provider", "list"]).await;
    assert_eq!(
        table.ok(),
        "NAME       KIND       BASE URL                       CREDENTIAL                API VERSION  RESPONSES\n\
         anthropic  anthropic  https://api.anthropic.com/     stored                    -            -\n\
         azure      azure      https://res.openai.azure.com/  env:AZURE_OPENAI_API_KEY  2024-10-21   translate\n\
         openai     openai     https://api.openai.com/v1      env:OPENAI_API_KEY        -            relay\n"
    );
    outputs.push(table);
    assert_eq!(cp.version().await, start + 3);

    // A second add of the same name is refused; --replace saves it.
    let out = cp
        .run(&[
            "provider",
            "add",
            "openai",
            "--kind",
            "openai",
            "--base-url",
            "https://other.example/v1",
        ])
        .await;
    assert_eq!(
        out.error(),
        "provider \"openai\" (use replace to overwrite it) already exists"
    );
    let out = cp
        .run(&[
            "provider",
            "add",
            "openai",
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://127.0.0.1:11434/v1",
            "--replace",
        ])
        .await;
    assert_eq!(changed_version(out.ok(), "provider openai saved"), start + 4);

    let out = cp.run(&["provider", "remove", "openai"]).await;
    assert_eq!(changed_version(out.ok(), "provider openai removed"), start + 5);
    let out = cp.run(&["provider", "remove", "openai"]).await;
    assert_eq!(out.error(), "provider \"openai\" not found");
    let out = cp.run(&["provider", "remove", "azure"]).await;
    assert_eq!(changed_version(out.ok(), "provider azure removed"), start + 6);
    assert_eq!(
        cp.list(&["provider", "list"]).await,
        json!([{
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com/",
            "credential": "stored",
            "api_version": null,
            "responses_api": null,
        }])
    );
    assert_eq!(cp.version().await, start + 6);

    for out in &outputs {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "the API key was printed:\n{out}"
        );
    }
}

#[tokio::test]
async fn routes_fall_back_in_order_or_split_by_weight() {
    let cp = TestControlPlane::start().await;
    for name in ["a", "b"] {
        cp.run(&[
            "provider",
            "add",
            name,
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ])
        .await
        .ok();
    }
    let start = cp.version().await;

    let out = cp
        .run(&[
            "route",
            "set",
            "fast",
            "--target",
            "a/m1",
            "--target",
            "b/m2",
            "--cache-ttl",
            "60",
        ])
        .await;
    assert_eq!(
        changed_version(out.ok(), "route fast set, fallback: a/m1, b/m2"),
        start + 1
    );
    let out = cp
        .run(&[
            "route",
            "set",
            "chat",
            "--target",
            "a/m=3",
            "--target",
            "b/org/m",
            "--retry-after-send",
        ])
        .await;
    assert_eq!(
        changed_version(
            out.ok(),
            "route chat set, weighted: a/m=3, b/org/m=1 (retry after send)"
        ),
        start + 2
    );

    let routes = json!([
        {
            "alias": "chat",
            "strategy": "weighted",
            "targets": [
                {"provider": "a", "model": "m", "weight": 3},
                {"provider": "b", "model": "org/m", "weight": 1},
            ],
            "cache_ttl_secs": 0,
            "retry_after_send": true,
        },
        {
            "alias": "fast",
            "strategy": "fallback",
            "targets": [
                {"provider": "a", "model": "m1", "weight": 1},
                {"provider": "b", "model": "m2", "weight": 1},
            ],
            "cache_ttl_secs": 60,
            "retry_after_send": false,
        },
    ]);
    assert_eq!(cp.list(&["route", "list"]).await, routes);
    assert_eq!(
        cp.run(&["route", "list"]).await.ok(),
        "ALIAS  STRATEGY  TARGETS           CACHE TTL  RETRY AFTER SEND\n\
         chat   weighted  a/m=3, b/org/m=1  -          yes\n\
         fast   fallback  a/m1, b/m2        60s        no\n"
    );

    // A provider that routes use cannot be removed.
    let before = cp.state().await;
    let out = cp.run(&["provider", "remove", "a"]).await;
    let message = out.error();
    assert!(
        message.contains("\"a\"") && message.contains("chat") && message.contains("fast"),
        "names the provider and the routes that use it:\n{out}"
    );
    assert_eq!(cp.state().await, before);

    let out = cp.run(&["route", "remove", "chat"]).await;
    assert_eq!(changed_version(out.ok(), "route chat removed"), start + 3);
    let out = cp.run(&["route", "remove", "chat"]).await;
    assert!(out.error().contains("chat"), "{out}");
    assert_eq!(cp.list(&["route", "list"]).await, json!([routes[1].clone()]));
    cp.run(&["route", "remove", "fast"]).await.ok();
    assert_eq!(cp.list(&["route", "list"]).await, json!([]));
    cp.run(&["provider", "remove", "a"]).await.ok();
    assert_eq!(cp.version().await, start + 5);
}

/// The custom prices in `price list --json`.
async fn custom_prices(cp: &TestControlPlane) -> Value {
    let all = cp.list(&["price", "list"]).await;
    let custom: Vec<Value> = all
        .as_array()
        .expect("price list --json is an array")
        .iter()
        .filter(|p| p["source"] == "custom")
        .cloned()
        .collect();
    Value::Array(custom)
}

#[tokio::test]
async fn prices_are_set_listed_and_removed() {
    let cp = TestControlPlane::start().await;
    assert_eq!(custom_prices(&cp).await, json!([]));
    // Well-known models are priced out of the box.
    let defaults = cp.list(&["price", "list"]).await;
    let gpt_4o = defaults
        .as_array()
        .expect("array")
        .iter()
        .find(|p| p["model"] == "gpt-4o")
        .cloned();
    assert_eq!(
        gpt_4o,
        Some(
            json!({"model": "gpt-4o", "input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25, "source": "default"})
        )
    );
    let table = cp.run(&["price", "list"]).await;
    let header = table.ok().lines().next().expect("a header");
    assert!(header.ends_with("SOURCE"), "{header}");
    assert!(
        table
            .ok()
            .lines()
            .any(|l| l.starts_with("gpt-4o ") && l.ends_with("default")),
        "{table}"
    );
    let start = cp.version().await;

    let out = cp
        .run(&[
            "price",
            "set",
            "gpt-4o",
            "--input",
            "2.5",
            "--output",
            "10",
            "--cached-input",
            "1.25",
        ])
        .await;
    assert_eq!(changed_version(out.ok(), "price gpt-4o set"), start + 1);
    let out = cp
        .run(&[
            "price",
            "set",
            "gpt-4o-mini",
            "--input",
            "0.15",
            "--output",
            "0.6",
        ])
        .await;
    assert_eq!(changed_version(out.ok(), "price gpt-4o-mini set"), start + 2);

    assert_eq!(
        custom_prices(&cp).await,
        json!([
            {"model": "gpt-4o", "input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25, "source": "custom"},
            {"model": "gpt-4o-mini", "input_per_mtok": 0.15, "output_per_mtok": 0.6, "cached_input_per_mtok": null, "source": "custom"},
        ])
    );

    let out = cp.run(&["price", "remove", "gpt-4o"]).await;
    assert_eq!(changed_version(out.ok(), "price gpt-4o removed"), start + 3);
    assert_eq!(
        custom_prices(&cp).await,
        json!([
            {"model": "gpt-4o-mini", "input_per_mtok": 0.15, "output_per_mtok": 0.6, "cached_input_per_mtok": null, "source": "custom"},
        ])
    );
    // The default is back, and it cannot be removed, only overridden.
    assert_eq!(
        cp.list(&["price", "list"]).await,
        defaults_with(&defaults, "gpt-4o-mini", 0.15, 0.6)
    );
    let out = cp.run(&["price", "remove", "gpt-4o"]).await;
    let message = out.error();
    assert!(
        message.contains("can be overridden") && message.contains("not removed"),
        "{out}"
    );

    // A price for one provider only.
    let out = cp
        .run(&[
            "price",
            "set",
            "groq/llama-3.3-70b-versatile",
            "--input",
            "0.5",
            "--output",
            "0.7",
        ])
        .await;
    assert_eq!(
        changed_version(out.ok(), "price groq/llama-3.3-70b-versatile set"),
        start + 4
    );
    assert_eq!(cp.version().await, start + 4);
}

/// `defaults` (a `price list --json`) with the price of `model` replaced by a custom one.
fn defaults_with(defaults: &Value, model: &str, input: f64, output: f64) -> Value {
    let rows = defaults.as_array().expect("array").iter().map(|p| {
        if p["model"] == model {
            json!({"model": model, "input_per_mtok": input, "output_per_mtok": output, "cached_input_per_mtok": null, "source": "custom"})
        } else {
            p.clone()
        }
    });
    Value::Array(rows.collect())
}

#[tokio::test]
async fn modules_not_implemented_cannot_be_enabled() {
    let cp = TestControlPlane::start().await;
    let modules = cp.list(&["module", "list"]).await;
    let names: Vec<&str> = modules
        .as_array()
        .expect("an array")
        .iter()
        .map(|m| m["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["auth", "rate_limit", "spend_cap", "audit", "redact"]);
    for m in modules.as_array().expect("an array") {
        assert_eq!(m["enabled"], json!(false), "{m}");
        let implemented = ["auth", "rate_limit", "spend_cap"].contains(&m["name"].as_str().unwrap_or(""));
        assert_eq!(
            m["available"],
            json!(implemented),
            "auth, rate_limit and spend_cap are implemented in this version: {m}"
        );
    }
    let table = cp.run(&["module", "list"]).await;
    assert!(
        table
            .ok()
            .contains("audit       off    no (not implemented in this version)\n"),
        "{table}"
    );
    let start = cp.version().await;

    // Switching one on is refused with one line, and changes nothing.
    for name in ["audit", "redact"] {
        let out = cp.run(&["module", "enable", name]).await;
        let module = name.replace('-', "_");
        assert_eq!(
            out.error(),
            format!(
                "module {module} is not available in this version of Drover: its flag would be recorded \
                 and distributed but change nothing on the request path, so it cannot be enabled"
            )
        );
    }
    assert_eq!(cp.version().await, start);
    assert_eq!(cp.list(&["module", "list"]).await, modules);

    // Switching one off stays allowed (it is off already: nothing changes).
    let out = cp.run(&["module", "disable", "audit"]).await;
    assert_eq!(changed_version(out.ok(), "module audit disabled"), start);
    assert_eq!(cp.list(&["module", "list"]).await, modules);

    // An implemented one switches on and off.
    let out = cp.run(&["module", "enable", "auth"]).await;
    assert_eq!(changed_version(out.ok(), "module auth enabled"), start + 1);
    let out = cp.run(&["module", "disable", "auth"]).await;
    assert_eq!(changed_version(out.ok(), "module auth disabled"), start + 2);
}

#[tokio::test]
async fn status_shows_the_policy_version_and_no_data_planes() {
    let cp = TestControlPlane::start().await;
    let status = cp.list(&["status"]).await;
    let version = status["version"].as_u64().expect("a version");
    assert!(!status["store_id"].as_str().unwrap_or_default().is_empty());
    assert_eq!(status["dataplanes"], json!([]));

    let out = cp
        .run(&["price", "set", "m", "--input", "1", "--output", "2"])
        .await;
    assert_eq!(changed_version(out.ok(), "price m set"), version + 1);
    let status = cp.list(&["status"]).await;
    assert_eq!(status["version"], json!(version + 1));
    let text = cp.run(&["status"]).await;
    assert!(
        text.ok()
            .starts_with(&format!("policy version  {}\n", version + 1)),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

/// 2026-11-01T00:00Z.
const NOV_1: i64 = 1_793_491_200_000;
const DAY: i64 = 86_400_000;

/// Sends usage records to the control plane as a data plane does (the admin token is accepted
/// in place of a data plane token).
async fn ingest(cp: &TestControlPlane, records: Vec<pb::UsageRecord>) -> pb::UsageAck {
    let mut client = UsageServiceClient::connect(cp.url.clone())
        .await
        .expect("usage service reachable");
    let mut request = tonic::Request::new(pb::UsageBatch {
        dataplane_id: "dp-test".into(),
        records,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    client.report(request).await.expect("batch applied").into_inner()
}

fn usage_record(
    id: &str,
    time_unix_ms: i64,
    tenant: &str,
    model: &str,
    cost_nano_usd: i64,
) -> pb::UsageRecord {
    pb::UsageRecord {
        request_id: id.into(),
        time_unix_ms,
        tenant: tenant.into(),
        key_id: format!("{tenant}-key"),
        provider: "openai".into(),
        model: model.into(),
        input_tokens: 1200,
        output_tokens: 300,
        cached_input_tokens: 200,
        cost_nano_usd,
        status: 200,
        ..Default::default()
    }
}

#[tokio::test]
async fn usage_shows_exact_totals_as_a_table_json_and_csv() {
    let cp = TestControlPlane::start().await;
    let mut records = vec![
        usage_record("r1", NOV_1 + 1, "acme", "gpt-4o", 333_333_333),
        usage_record("r2", NOV_1 + 2, "acme", "gpt-4o", 333_333_333),
        usage_record("r3", NOV_1 + DAY, "acme", "gpt-4o-mini", 333_333_333),
        usage_record("r4", NOV_1 + DAY + 5, "globex", "gpt-4o", 1),
        usage_record("r5", NOV_1 + 2 * DAY, "globex", "m,odd", 7),
    ];
    records[4].unpriced = true;
    records[3].failed = true;
    records[3].status = 502;
    records[2].cache_hit = true;
    records[2].saved_nano_usd = 250_000;
    let ack = ingest(&cp, records.clone()).await;
    assert_eq!((ack.applied, ack.duplicates), (5, 0));
    // A resend is ignored.
    assert_eq!(ingest(&cp, records).await.duplicates, 5);

    let total = json!({
        "group": "", "requests": 5, "input_tokens": 6000, "output_tokens": 1500, "cached_input_tokens": 1000,
        "cost_nano_usd": 1_000_000_007, "cost_usd": "1.000000007", "cache_hits": 1,
        "saved_nano_usd": 250_000, "saved_usd": "0.000250", "failed": 1, "unpriced": 1,
    });
    let all = cp.list(&["usage"]).await;
    assert_eq!(all, json!({"rows": [total.clone()], "total": total.clone()}));

    let by_model = cp.list(&["usage", "--by", "model"]).await;
    assert_eq!(by_model["total"], total);
    let costs: Vec<(&str, i64, &str)> = by_model["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["group"].as_str().expect("group"),
                r["cost_nano_usd"].as_i64().expect("cost"),
                r["cost_usd"].as_str().expect("cost_usd"),
            )
        })
        .collect();
    assert_eq!(
        costs,
        [
            ("gpt-4o", 666_666_667, "0.666666667"),
            ("gpt-4o-mini", 333_333_333, "0.333333333"),
            ("m,odd", 7, "0.000000007"),
        ]
    );

    // Filters and a day range: the 2nd of November, globex only.
    let filtered = cp
        .list(&[
            "usage",
            "--tenant",
            "globex",
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-03",
            "--by",
            "key",
        ])
        .await;
    assert_eq!(filtered["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(filtered["rows"][0]["group"], "globex-key");
    assert_eq!(filtered["total"]["cost_nano_usd"], 1);
    let since = cp
        .list(&[
            "usage",
            "--since",
            "2026-11-01T00:00:00.002Z",
            "--until",
            "2026-11-02T00:00:00+00:00",
        ])
        .await;
    assert_eq!(since["total"]["requests"], 1, "half-open, to the millisecond");

    let csv = cp.run(&["usage", "--by", "day", "--csv"]).await;
    assert_eq!(
        csv.ok(),
        "group,requests,input_tokens,output_tokens,cached_input_tokens,cost_nano_usd,cost_usd,cache_hits,\
         saved_nano_usd,saved_usd,failed,unpriced\n\
         2026-11-01,2,2400,600,400,666666666,0.666666666,0,0,0.000000,0,0\n\
         2026-11-02,2,2400,600,400,333333334,0.333333334,1,250000,0.000250,1,0\n\
         2026-11-03,1,1200,300,200,7,0.000000007,0,0,0.000000,0,1\n"
    );

    let table = cp.run(&["usage", "--by", "tenant"]).await;
    let lines: Vec<&str> = table.ok().lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("TENANT  REQUESTS"), "{table}");
    assert!(lines[1].starts_with("acme    3 "), "{table}");
    assert!(
        lines[3].starts_with("TOTAL   5 ") && lines[3].contains(" 1.000000007 "),
        "{table}"
    );

    // Bad ranges and dates are refused before anything is asked.
    let out = cp
        .run(&["usage", "--since", "2026-11-02", "--until", "2026-11-01"])
        .await;
    assert_eq!(
        out.error(),
        "--until must be after --since (the range is [since, until))"
    );
    let out = cp.run(&["usage", "--since", "last week"]).await;
    assert!(out.usage_error().contains("is not a date"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Failures: one line, a non-zero exit, nothing changed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rejected_token_is_one_line_and_changes_nothing() {
    let cp = TestControlPlane::start().await;
    cp.run(&["price", "set", "m", "--input", "1", "--output", "2"])
        .await
        .ok();
    let before = cp.state().await;

    // From the environment, on a change.
    let out = cp
        .drover_without_token()
        .env("DROVER_ADMIN_TOKEN", "wrong-token-from-env")
        .args(["price", "set", "m", "--input", "5", "--output", "5"])
        .run()
        .await;
    assert_eq!(
        out.error(),
        "the admin token was rejected (set DROVER_ADMIN_TOKEN or --token)"
    );
    assert!(!out.stderr.contains("wrong-token-from-env"), "{out}");

    // From --token, on a change and on a read.
    for args in [
        &["module", "enable", "audit"][..],
        &["provider", "list", "--json"][..],
    ] {
        let out = cp
            .drover_without_token()
            .args(["--token", "wrong-token-from-flag"])
            .args(args)
            .run()
            .await;
        assert_eq!(
            out.error(),
            "the admin token was rejected (set DROVER_ADMIN_TOKEN or --token)"
        );
    }

    // No token at all: says how to give one.
    let out = cp
        .drover_without_token()
        .args(["route", "set", "r", "--target", "a/m"])
        .run()
        .await;
    let message = out.error();
    assert!(
        message.starts_with("no admin token: set DROVER_ADMIN_TOKEN or --token"),
        "{out}"
    );
    assert!(message.contains("drover.admin-token"), "{out}");

    assert_eq!(cp.state().await, before);
}

#[tokio::test]
async fn a_control_plane_that_is_not_running_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = closed_port();
    for args in [
        &["status"][..],
        &["provider", "list", "--json"][..],
        &["module", "enable", "audit"][..],
    ] {
        let out = Drover::new(dir.path())
            .env("DROVER_ADMIN_TOKEN", TOKEN)
            .args(["--server", &format!("http://127.0.0.1:{port}")])
            .args(args)
            .run()
            .await;
        assert_eq!(
            out.error(),
            format!("cannot reach the control plane at http://127.0.0.1:{port} (is it running?)")
        );
    }
    // DROVER_SERVER, and host:port without a scheme.
    let out = Drover::new(dir.path())
        .env("DROVER_ADMIN_TOKEN", TOKEN)
        .env("DROVER_SERVER", &format!("127.0.0.1:{port}"))
        .arg("status")
        .run()
        .await;
    assert_eq!(
        out.error(),
        format!("cannot reach the control plane at http://127.0.0.1:{port} (is it running?)")
    );
}

#[tokio::test]
async fn a_tls_control_plane_is_reached_with_its_ca_and_refused_without() {
    let cp = TestControlPlane::start_tls().await;
    let ca = cp.ca_file();
    let ca = ca.to_str().expect("UTF-8 path");
    let out = cp.drover().args(["--ca", ca, "status", "--json"]).run().await;
    assert_eq!(parse_json(out.ok(), &out)["version"], json!(1));
    let out = cp
        .drover()
        .env("DROVER_CA", ca)
        .args(["provider", "list", "--json"])
        .run()
        .await;
    assert_eq!(parse_json(out.ok(), &out), json!([]));

    // The webpki roots do not know the test CA.
    let out = cp.drover().arg("status").run().await;
    let prefix = format!("cannot connect to the control plane at {} over TLS: ", cp.url);
    let error = out.error();
    assert!(
        error.starts_with(&prefix) && error.contains("certificate"),
        "{out}"
    );

    // Plaintext to the TLS listener, and a CA with a plaintext URL.
    let plaintext = cp.url.replacen("https://", "http://", 1);
    let plain = || Drover::new(&cp.dir.path().join("cwd")).env("DROVER_ADMIN_TOKEN", TOKEN);
    // The TLS listener closes the connection or answers garbage, whichever the client
    // notices first: either way one line naming the server.
    let out = plain().args(["--server", &plaintext, "status"]).run().await;
    assert!(out.error().contains(&plaintext), "{out}");
    let out = plain()
        .args(["--server", &plaintext, "--ca", ca, "status"])
        .run()
        .await;
    assert_eq!(
        out.error(),
        format!(
            "--ca {ca} is for a control plane reached over TLS; --server {plaintext} is not an https:// URL"
        )
    );
}

#[tokio::test]
async fn invalid_arguments_are_one_clear_line_and_write_nothing() {
    let cp = TestControlPlane::start().await;
    cp.run(&[
        "provider",
        "add",
        "openai",
        "--kind",
        "openai",
        "--base-url",
        "https://api.openai.com/v1",
    ])
    .await
    .ok();
    let before = cp.state().await;

    // Only the control plane knows which providers exist (INVALID_ARGUMENT).
    let out = cp
        .run(&[
            "route",
            "set",
            "fast",
            "--target",
            "openai/gpt-4o-mini",
            "--target",
            "nope/m",
        ])
        .await;
    let message = out.error();
    assert!(
        message.contains("unknown provider \"nope\""),
        "names the provider:\n{out}"
    );
    assert!(!message.contains("openai"), "and only that one:\n{out}");

    // Usage errors, caught before connecting.
    let out = cp
        .run(&[
            "provider",
            "add",
            "x",
            "--kind",
            "openia",
            "--base-url",
            "https://x.example",
        ])
        .await;
    let message = out.usage_error();
    assert!(
        message.contains("--kind") && message.contains("unknown provider kind \"openia\""),
        "{out}"
    );
    let out = cp
        .run(&[
            "provider",
            "add",
            "x",
            "--kind",
            "azure",
            "--base-url",
            "https://x.example",
            "--api-version",
            "2024-10-21&x=1",
        ])
        .await;
    let message = out.usage_error();
    assert!(
        message.contains("--api-version") && message.contains("must be 1-64 of A-Z"),
        "{out}"
    );
    // An api-version on any kind but azure, refused before anything is sent.
    let out = cp
        .run(&[
            "provider",
            "add",
            "x",
            "--kind",
            "openai",
            "--base-url",
            "https://x.example",
            "--api-version",
            "2024-10-21",
        ])
        .await;
    assert_eq!(
        out.error(),
        "provider \"x\"/api_version: only azure providers take an api-version"
    );
    let out = cp.run(&["module", "enable", "telepathy"]).await;
    assert!(
        out.usage_error().contains("unknown module \"telepathy\""),
        "{out}"
    );
    let out = cp.run(&["route", "set", "r", "--target", "openai/m=0"]).await;
    assert!(
        out.usage_error()
            .contains("must be a whole number from 1 to 1000000"),
        "{out}"
    );

    // Negative prices, however they are written.
    for args in [
        &["price", "set", "m", "--input", "-1", "--output", "1"][..],
        &["price", "set", "m", "--input=-1", "--output", "1"][..],
    ] {
        let out = cp.run(args).await;
        assert_eq!(
            out.error(),
            "price \"m\"/input: -1 is not a price; must be zero or more USD"
        );
    }
    let out = cp
        .run(&["price", "set", "m", "--input", "1", "--output", "-0.5"])
        .await;
    assert_eq!(
        out.error(),
        "price \"m\"/output: -0.5 is not a price; must be zero or more USD"
    );

    // Removing what does not exist.
    let out = cp.run(&["route", "remove", "ghost"]).await;
    assert!(out.error().contains("\"ghost\""), "{out}");
    let out = cp.run(&["price", "remove", "ghost"]).await;
    assert!(out.error().contains("\"ghost\""), "{out}");

    assert_eq!(cp.state().await, before);
}

// ---------------------------------------------------------------------------------------------
// The token file beside the database
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn without_a_token_the_cli_reads_the_token_file_beside_the_database() {
    let cp = TestControlPlane::start_with(None).await;
    let token_file = token_file_for(&cp.db);
    assert_eq!(cp.created_token_file.as_deref(), Some(token_file.as_path()));
    let token = std::fs::read_to_string(&token_file).expect("the token file exists");
    assert!(!token.trim().is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&token_file)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only its owner can read the token");
    }
    let db = cp.db.to_str().expect("UTF-8 path");

    // --db, and DROVER_DB.
    let out = cp
        .drover_without_token()
        .args(["--db", db, "price", "set", "m", "--input", "1", "--output", "2"])
        .run()
        .await;
    let version = changed_version(out.ok(), "price m set");
    let out = cp
        .drover_without_token()
        .env("DROVER_DB", db)
        .args(["status", "--json"])
        .run()
        .await;
    assert_eq!(parse_json(out.ok(), &out)["version"], json!(version));

    // Pointed elsewhere (here: drover.db in an empty working directory), it says where it looked.
    let out = cp.drover_without_token().arg("status").run().await;
    let message = out.error();
    assert!(
        message.starts_with(
            "no admin token: set DROVER_ADMIN_TOKEN or --token (no token file at drover.admin-token;"
        ),
        "{out}"
    );
    let out = cp
        .drover_without_token()
        .args(["--db", db, "--token", "not-the-token", "status"])
        .run()
        .await;
    assert_eq!(
        out.error(),
        "the admin token was rejected (set DROVER_ADMIN_TOKEN or --token)",
        "a given token wins over the file"
    );
    assert!(!out.stderr.contains(token.trim()), "{out}");
}

// ---------------------------------------------------------------------------------------------
// `drover serve`
// ---------------------------------------------------------------------------------------------

/// Polls `drover status --json` until its first data plane serves `version` or newer, and
/// returns that status.
async fn wait_served(drover: &dyn Fn() -> Drover, version: u64) -> Value {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let out = drover().args(["status", "--json"]).run().await;
        let status = parse_json(out.ok(), &out);
        if status["dataplanes"][0]["served_version"].as_u64() >= Some(version) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the data plane never served {version}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `drover serve` as a child process, killed if the test ends before it stops.
struct ServeProcess {
    child: Child,
    log: PathBuf,
    /// Its directory: the database and the log.
    dir: PathBuf,
}

impl ServeProcess {
    fn start(dir: &Path, http: SocketAddr, grpc: SocketAddr) -> Self {
        Self::spawn(dir, http, grpc, &[], &[])
    }

    fn start_with(dir: &Path, http: SocketAddr, grpc: SocketAddr, extra: &[&str]) -> Self {
        Self::spawn(dir, http, grpc, extra, &[])
    }

    /// Started with these environment variables besides the admin token.
    fn start_with_env(dir: &Path, http: SocketAddr, grpc: SocketAddr, env: &[(&str, &str)]) -> Self {
        Self::spawn(dir, http, grpc, &[], env)
    }

    fn spawn(dir: &Path, http: SocketAddr, grpc: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .env_clear()
            .env("DROVER_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .current_dir(dir)
            .args(["serve", "--db"])
            .arg(dir.join("drover.db"))
            .args(["--http", &http.to_string(), "--grpc", &grpc.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("drover serve starts");
        ServeProcess {
            child,
            log,
            dir: dir.to_owned(),
        }
    }

    /// `drover` invocations with the admin token against `server`, each run from the same
    /// directory of their own (made here), beside the database.
    fn cli(&self, server: &str) -> impl Fn() -> Drover + use<> {
        let cwd = self.dir.join("cwd");
        std::fs::create_dir_all(&cwd).expect("working directory");
        let server = server.to_owned();
        move || {
            Drover::new(&cwd)
                .env("DROVER_ADMIN_TOKEN", TOKEN)
                .args(["--server", &server])
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if `drover serve` has exited.
    #[track_caller]
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("drover serve exited with {status}:\n{}", self.log());
        }
    }

    /// Polls `GET /readyz` until it answers 200.
    async fn wait_ready(&mut self, http: SocketAddr) {
        let deadline = Instant::now() + SERVE_TIMEOUT;
        loop {
            self.assert_running();
            if let Some(response) = get(http, "/readyz").await
                && response.starts_with("HTTP/1.1 200")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "drover serve was not ready within {SERVE_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and checks that it exits cleanly.
    async fn stop(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "drover serve exits cleanly on SIGTERM, got {status}:\n{}",
            self.log()
        );
    }

    /// Sends SIGTERM and waits for the exit status.
    async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + SERVE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "drover serve did not stop within {SERVE_TIMEOUT:?} of SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; the raw response, or `None` if the connection failed.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Option<String> {
    exchange(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// One HTTP/1.1 exchange: the whole response, or `None` if it failed or took over 10 s.
async fn exchange(addr: SocketAddr, request: String) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        String::from_utf8(response).ok()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// A loopback address that was free a moment ago (bound to port 0, read, released): for a
/// child process that cannot report the port it got.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

#[tokio::test]
async fn serve_runs_both_planes_until_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, grpc) = (free_addr(), free_addr());
    let mut serve = ServeProcess::start(dir.path(), http, grpc);
    serve.wait_ready(http).await;

    let drover = serve.cli(&format!("http://{grpc}"));
    let out = drover().args(["provider", "list", "--json"]).run().await;
    assert_eq!(parse_json(out.ok(), &out), json!([]));
    let out = drover()
        .args([
            "provider",
            "add",
            "local",
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ])
        .run()
        .await;
    let version = changed_version(out.ok(), "provider local added");
    let out = drover().args(["provider", "list", "--json"]).run().await;
    assert_eq!(parse_json(out.ok(), &out)[0]["name"], json!("local"));

    // The in-process data plane is connected; it serves the new version once the policy
    // stream has delivered it.
    let status = wait_served(&drover, version).await;
    assert_eq!(status["version"], json!(version));
    let planes = status["dataplanes"].as_array().cloned().unwrap_or_default();
    assert_eq!(planes.len(), 1, "{status}");
    assert_eq!(planes[0]["id"], json!("local"));
    assert_eq!(planes[0]["connected"], json!(true));
    assert_eq!(planes[0]["served_version"], json!(version));

    // A request through the in-process data plane is metered and its record reaches the
    // ledger. The provider is unreachable, so the request fails (502), and is billed as failed.
    let out = drover()
        .args(["route", "set", "m", "--target", "local/m"])
        .run()
        .await;
    let version: u64 = out
        .ok()
        .trim_end()
        .strip_suffix(')')
        .and_then(|s| s.rsplit_once("policy version "))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("a policy version in {out}"));
    wait_served(&drover, version).await;
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let response = post_json(
        http,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await
    .expect("the data plane answers");
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    loop {
        let out = drover().args(["usage", "--json"]).run().await;
        let usage = parse_json(out.ok(), &out);
        if usage["total"]["requests"] == json!(1) {
            assert_eq!(usage["total"]["failed"], json!(1), "{usage}");
            break;
        }
        assert_eq!(usage["total"]["requests"], json!(0), "{usage}");
        assert!(
            Instant::now() < deadline,
            "the request never reached the ledger: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    serve.assert_running();
    serve.stop().await;
}

#[tokio::test]
async fn serve_with_grpc_tls_connects_its_own_data_plane_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::issue(dir.path());
    let (http, grpc) = (free_addr(), free_addr());
    let (cert, key) = (pki.cert.display().to_string(), pki.key.display().to_string());
    let mut serve = ServeProcess::start_with(
        dir.path(),
        http,
        grpc,
        &["--grpc-tls-cert", &cert, "--grpc-tls-key", &key],
    );
    // Ready means the in-process data plane applied a snapshot streamed over TLS.
    serve.wait_ready(http).await;

    let server = format!("https://{grpc}");
    let out = serve.cli(&server)()
        .env("DROVER_CA", &pki.ca.display().to_string())
        .args(["status", "--json"])
        .run()
        .await;
    let status = parse_json(out.ok(), &out);
    assert_eq!(status["dataplanes"][0]["id"], json!("local"), "{status}");
    assert_eq!(status["dataplanes"][0]["connected"], json!(true), "{status}");
    assert!(
        serve.log().contains(&format!("admin API on {server}")),
        "{}",
        serve.log()
    );

    serve.stop().await;
}

#[tokio::test]
async fn serve_reports_providers_whose_key_it_may_not_read_in_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (http, grpc) = (free_addr(), free_addr());
    let mut serve = ServeProcess::start_with_env(
        dir.path(),
        http,
        grpc,
        &[
            ("OLLAMA_TOKEN", "ollama-secret-value"),
            ("GOOD_API_KEY", "good-secret-value"),
        ],
    );
    serve.wait_ready(http).await;
    let drover = serve.cli(&format!("http://{grpc}"));
    let add = |name: &'static str, var: &'static str| {
        drover().args([
            "provider",
            "add",
            name,
            "--kind",
            "openai-compatible",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key-env",
            var,
        ])
    };

    // Drover's own settings are refused outright, by the CLI and by the control plane.
    let out = add("greedy", "DROVER_ADMIN_TOKEN").run().await;
    assert_eq!(
        out.error(),
        "provider \"greedy\"/api_key_env: DROVER_ADMIN_TOKEN is one of Drover's own settings (DROVER_*) \
         and is never sent to a provider; keep the provider's key in another variable, e.g. OPENAI_API_KEY"
    );

    // A variable outside the data plane's allow-list (default *_API_KEY) is not read: the policy
    // is applied, and the provider is reported unavailable.
    add("good", "GOOD_API_KEY").run().await.ok();
    let out = add("ollama", "OLLAMA_TOKEN").run().await;
    let version = changed_version(out.ok(), "provider ollama added");
    let reason = "environment variable OLLAMA_TOKEN is not allowed by this data plane's \
                  --credential-env-allow (*_API_KEY)";
    let plane = wait_served(&drover, version).await["dataplanes"][0].clone();
    assert_eq!(plane["served_version"], json!(version), "{plane}");
    assert_eq!(
        plane["unavailable_providers"],
        json!([{"provider": "ollama", "reason": reason}]),
        "{plane}"
    );
    assert_eq!(plane["last_error"], json!(""), "applied, not rejected: {plane}");
    let out = drover().args(["status"]).run().await;
    let text = out.ok();
    assert!(text.contains(&format!("  local  ollama: {reason}\n")), "{text}");
    assert!(!text.contains("secret-value"), "{text}");

    let response = post_json(
        http,
        "/v1/chat/completions",
        r#"{"model":"ollama/llama3","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await
    .expect("the data plane answers");
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.contains(&format!(
            "provider `ollama` is unavailable on this gateway: {reason}"
        )),
        "{response}"
    );
    assert!(!response.contains("secret-value"), "{response}");

    serve.assert_running();
    serve.stop().await;
    assert!(!serve.log().contains("secret-value"), "{}", serve.log());
}

#[tokio::test]
async fn tenants_and_keys_from_the_command_line() {
    let cp = TestControlPlane::start().await;
    let start = cp.version().await;
    let out = cp
        .run(&["tenant", "create", "acme", "--label", "team=search"])
        .await;
    assert_eq!(changed_version(out.ok(), "tenant acme created"), start + 1);
    let tenants = cp.list(&["tenant", "list"]).await;
    assert_eq!(tenants[0]["name"], "acme");
    assert_eq!(tenants[0]["labels"]["team"], "search");
    assert_eq!(tenants[0]["state"], "active");
    // A second tenant of the same name is refused, with nothing changed.
    let dup = cp.run(&["tenant", "create", "acme"]).await;
    assert!(dup.error().contains("already exists"), "{dup}");
    assert_eq!(cp.version().await, start + 1);

    // key create --json: the secret once, with the fields a script needs.
    let created = cp
        .list(&[
            "key",
            "create",
            "--tenant",
            "acme",
            "--name",
            "ci",
            "--models",
            "m,openai/gpt-4o",
            "--expires",
            "30d",
        ])
        .await;
    for field in ["id", "key", "tenant", "name", "models", "expires_at"] {
        assert!(created.get(field).is_some(), "{field} in {created}");
    }
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("drv_") && secret.len() == 47, "{secret}");
    assert_eq!(created["models"], json!(["m", "openai/gpt-4o"]));
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));
    let id = created["id"].as_str().unwrap().to_owned();
    // The text form says the secret is shown once.
    let text = cp.run(&["key", "create", "--tenant", "acme"]).await;
    assert!(
        text.ok().contains("drv_") && text.ok().contains("only time"),
        "{text}"
    );

    let keys = cp.list(&["key", "list", "--tenant", "acme"]).await;
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(
        !keys.to_string().contains(&secret),
        "a listing never shows a secret"
    );
    let ours = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(id))
        .unwrap();
    assert_eq!(ours["prefix"], json!(&secret[..10]));
    assert_eq!(ours["state"], "active");
    assert_eq!(ours["last_used_at"], Value::Null);
    let table = cp.run(&["key", "list"]).await;
    assert!(table.ok().starts_with("ID "), "{table}");

    // Rotation prints a new secret; revocation shows in the listing.
    let rotated = cp.list(&["key", "rotate", &id, "--grace", "1h"]).await;
    assert_ne!(rotated["key"], json!(secret));
    let out = cp.run(&["key", "revoke", &id]).await;
    assert!(out.ok().starts_with(&format!("key {id} revoked")), "{out}");
    let keys = cp.list(&["key", "list", "--tenant", "acme"]).await;
    let ours = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(id))
        .unwrap();
    assert_eq!(ours["state"], "revoked");

    // Suspend and resume; delete refused while a key is active, then forced.
    let out = cp.run(&["tenant", "suspend", "acme"]).await;
    assert!(out.ok().starts_with("tenant acme suspended"), "{out}");
    assert_eq!(cp.list(&["tenant", "list"]).await[0]["state"], "suspended");
    cp.run(&["tenant", "resume", "acme"]).await.ok();
    let refused = cp.run(&["tenant", "delete", "acme"]).await;
    assert!(refused.error().contains("active key"), "{refused}");
    let out = cp.run(&["tenant", "delete", "acme", "--force"]).await;
    assert!(
        out.ok().starts_with("tenant acme deleted, 1 key(s) revoked"),
        "{out}"
    );
    assert_eq!(cp.list(&["tenant", "list"]).await, json!([]));

    // Bad input: refused before anything is sent.
    let unknown = cp.run(&["key", "create", "--tenant", "nobody"]).await;
    assert!(unknown.error().contains("nobody"), "{unknown}");
    let malformed = cp
        .run(&["key", "create", "--tenant", "acme", "--expires", "tomorrow"])
        .await;
    assert!(malformed.usage_error().contains("duration"), "{malformed}");
    let empty = cp
        .run(&["key", "create", "--tenant", "acme", "--models", "m,,x"])
        .await;
    assert!(empty.error().contains("--models"), "{empty}");
}

// ---------------------------------------------------------------------------------------------
// Rate limits, spend caps and a tenant's on-cp-loss mode
// ---------------------------------------------------------------------------------------------

/// Now, Unix milliseconds, at least 10 s away from a UTC midnight, so that usage reported now
/// falls in the day a cap listing right after counts.
async fn now_inside_a_day() -> i64 {
    let now = || drover_proto::model::now_unix_ms();
    let into_day = now() % DAY;
    if !(10_000..DAY - 10_000).contains(&into_day) {
        tokio::time::sleep(Duration::from_secs(21)).await;
    }
    now()
}

#[tokio::test]
async fn limits_caps_and_on_cp_loss_from_the_command_line() {
    let cp = TestControlPlane::start().await;
    let created = cp
        .list(&["tenant", "create", "acme", "--on-cp-loss", "closed"])
        .await;
    assert_eq!(created["on_cp_loss"], "closed");
    let out = cp
        .run(&["tenant", "update", "acme", "--on-cp-loss", "open"])
        .await;
    let v = changed_version(out.ok(), "tenant acme updated: on-cp-loss open");
    assert_eq!(cp.list(&["tenant", "list"]).await[0]["on_cp_loss"], "open");
    let table = cp.run(&["tenant", "list"]).await;
    assert!(table.ok().contains("ON CP LOSS"), "{table}");
    let key = cp.list(&["key", "create", "--tenant", "acme"]).await["id"]
        .as_str()
        .expect("key id")
        .to_owned();

    // Limits: set, merged, listed, removed.
    let out = cp
        .run(&["limit", "set", "--tenant", "acme", "--rpm", "600"])
        .await;
    assert_eq!(
        changed_version(out.ok(), "limits of tenant acme set: rpm 600"),
        v + 2
    );
    let out = cp
        .run(&["limit", "set", "--tenant", "acme", "--concurrency", "4"])
        .await;
    changed_version(out.ok(), "limits of tenant acme set: rpm 600, concurrency 4");
    let set = cp.list(&["limit", "set", "--key", &key, "--tpm", "90000"]).await;
    assert_eq!(
        set,
        json!({"tenant": "acme", "key": key, "rpm": null, "tpm": 90000, "concurrency": null})
    );
    let limits = cp.list(&["limit", "list", "--tenant", "acme"]).await;
    assert_eq!(
        limits,
        json!([
            {"tenant": "acme", "key": null, "rpm": 600, "tpm": null, "concurrency": 4},
            {"tenant": "acme", "key": key, "rpm": null, "tpm": 90000, "concurrency": null},
        ])
    );
    let table = cp.run(&["limit", "list"]).await;
    assert!(table.ok().starts_with("TENANT  KEY"), "{table}");
    let out = cp
        .run(&["limit", "remove", "--tenant", "acme", "--rpm", "--concurrency"])
        .await;
    assert!(
        out.ok()
            .starts_with("rpm, concurrency limit of tenant acme removed (policy version "),
        "{out}"
    );
    let out = cp.run(&["limit", "remove", "--key", &key]).await;
    assert!(
        out.ok().starts_with(&format!("limits of key {key} removed")),
        "{out}"
    );
    assert_eq!(cp.list(&["limit", "list"]).await, json!([]));
    assert_eq!(cp.run(&["limit", "list"]).await.ok(), "no limits\n");

    // Caps: exact amounts, the spend of the period from the ledger, removal.
    let out = cp
        .run(&[
            "cap",
            "set",
            "--tenant",
            "acme",
            "--usd",
            "10",
            "--period",
            "day",
            "--soft-at",
            "0.8",
        ])
        .await;
    changed_version(out.ok(), "cap of tenant acme set: 10.000000 USD per day");
    let set = cp
        .list(&[
            "cap",
            "set",
            "--key",
            &key,
            "--usd",
            "0.3",
            "--period",
            "total",
            "--allow-unpriced",
        ])
        .await;
    assert_eq!(set["limit_nano_usd"], 300_000_000);
    assert_eq!(set["limit_usd"], "0.300000");
    assert_eq!(set["period_end"], Value::Null);
    assert_eq!(set["allow_unpriced"], true);
    let now = now_inside_a_day().await;
    let spend = |id: &str, cost_nano_usd| pb::UsageRecord {
        key_id: key.clone(),
        ..usage_record(id, now - 1_000, "acme", "gpt-4o", cost_nano_usd)
    };
    ingest(&cp, vec![spend("c1", 100_000_001), spend("c2", 250_000_000)]).await;
    let caps = cp.list(&["cap", "list"]).await;
    assert_eq!(caps.as_array().expect("an array").len(), 2);
    let day = &caps[0];
    assert_eq!(
        (day["tenant"].as_str(), day["period"].as_str()),
        (Some("acme"), Some("day"))
    );
    assert_eq!(day["spent_usd"], "0.350000001");
    assert_eq!(day["remaining_usd"], "9.649999999");
    assert_eq!(day["soft_at"], 0.8);
    let total = &caps[1];
    assert_eq!(total["key"], json!(key));
    assert_eq!(total["spent_nano_usd"], 350_000_001);
    assert_eq!(total["remaining_usd"], "0.000000", "never below zero");
    let table = cp.run(&["cap", "list", "--tenant", "acme"]).await;
    let text = table.ok();
    assert!(
        text.starts_with("TENANT  KEY") && text.contains("0.350000001"),
        "{table}"
    );
    let out = cp
        .run(&["cap", "remove", "--tenant", "acme", "--period", "day"])
        .await;
    assert!(out.ok().starts_with("day cap of tenant acme removed"), "{out}");
    let out = cp.run(&["cap", "remove", "--key", &key]).await;
    assert!(
        out.ok().starts_with(&format!("caps of key {key} removed")),
        "{out}"
    );
    assert_eq!(cp.run(&["cap", "list"]).await.ok(), "no caps\n");
}

#[tokio::test]
async fn bad_limits_and_caps_are_one_clear_line_and_change_nothing() {
    let cp = TestControlPlane::start().await;
    cp.run(&["tenant", "create", "acme"]).await.ok();
    cp.run(&["tenant", "create", "gone"]).await.ok();
    cp.run(&["tenant", "delete", "gone"]).await.ok();
    let revoked = cp.list(&["key", "create", "--tenant", "acme"]).await["id"]
        .as_str()
        .expect("key id")
        .to_owned();
    cp.run(&["key", "revoke", &revoked]).await.ok();
    cp.run(&["limit", "set", "--tenant", "acme", "--rpm", "5"])
        .await
        .ok();
    cp.run(&[
        "cap", "set", "--tenant", "acme", "--usd", "1", "--period", "month",
    ])
    .await
    .ok();
    let before = json!({
        "version": cp.version().await,
        "limits": cp.list(&["limit", "list"]).await,
        "caps": cp.list(&["cap", "list"]).await,
        "tenants": cp.list(&["tenant", "list"]).await,
    });

    let limit = |args: &[&str]| {
        let mut argv = vec!["limit", "set", "--tenant", "acme"];
        argv.extend_from_slice(args);
        argv.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let refused: Vec<(Vec<String>, String)> = vec![
        (
            limit(&["--rpm", "0"]),
            "--rpm: 0 is not a limit: it must be from 1 to 1000000000000".into(),
        ),
        (
            limit(&["--tpm", "-5"]),
            "--tpm: -5 is not a limit: it must be from 1 to 1000000000000".into(),
        ),
        (
            limit(&["--concurrency", "2000000"]),
            "--concurrency: 2000000 is not a limit: it must be from 1 to 1000000".into(),
        ),
        (
            limit(&["--rpm", "many"]),
            "--rpm: \"many\" is not a whole number".into(),
        ),
        (
            limit(&[]),
            "no limit given: set at least one of --rpm, --tpm and --concurrency".into(),
        ),
    ];
    let cap = |usd: &str, extra: &[&str]| {
        let mut argv = vec!["cap", "set", "--tenant", "acme", "--period", "day", "--usd", usd];
        argv.extend_from_slice(extra);
        argv.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let refused_caps: Vec<(Vec<String>, String)> = vec![
        (
            cap("-5", &[]),
            "--usd: -5 is not a cap: it must be more than 0 USD".into(),
        ),
        (
            cap("0", &[]),
            "--usd: 0 is not a cap: it must be more than 0 USD".into(),
        ),
        (
            cap("0.0000000001", &[]),
            "--usd: 0.0000000001 has more than 9 decimal places (the smallest amount is 0.000000001 USD)"
                .into(),
        ),
        (
            cap("1e3", &[]),
            "--usd: \"1e3\" is not an amount of USD, such as 25 or 0.50".into(),
        ),
        (
            cap("2000000", &[]),
            "--usd: 2000000 is not a cap: it must be at most 1000000 USD".into(),
        ),
        (
            cap("5", &["--soft-at", "1.0"]),
            "--soft-at: 1 is not a fraction between 0 and 1 (both excluded)".into(),
        ),
        (
            cap("5", &["--soft-at", "-0.5"]),
            "--soft-at: -0.5 is not a fraction between 0 and 1 (both excluded)".into(),
        ),
    ];
    for (argv, message) in refused.into_iter().chain(refused_caps) {
        let out = cp.run(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(out.error(), message, "{out}");
    }

    // What only the control plane knows: owners that do not exist (any more).
    let cases = [
        (
            vec!["limit", "set", "--tenant", "ghost", "--rpm", "5"],
            "tenant \"ghost\" not found".to_owned(),
        ),
        (
            vec!["limit", "set", "--key", "key_0000000000000000", "--rpm", "5"],
            "key \"key_0000000000000000\" not found".to_owned(),
        ),
        (
            vec!["limit", "remove", "--key", revoked.as_str()],
            format!("key \"{revoked}\" not found: it is revoked"),
        ),
        (
            vec![
                "cap", "set", "--tenant", "gone", "--usd", "5", "--period", "total",
            ],
            "tenant \"gone\" not found".to_owned(),
        ),
        (
            vec!["cap", "list", "--tenant", "gone"],
            "tenant \"gone\" not found".to_owned(),
        ),
    ];
    for (argv, message) in cases {
        let out = cp.run(&argv).await;
        assert_eq!(out.error(), message, "{out}");
    }

    // Usage errors, caught by the parser.
    let out = cp
        .run(&["cap", "set", "--tenant", "acme", "--usd", "5", "--period", "week"])
        .await;
    assert!(
        out.usage_error()
            .contains("\"week\" is not a period: day, month or total"),
        "{out}"
    );
    let out = cp.run(&["limit", "set", "--rpm", "5"]).await;
    assert!(
        out.usage_error().contains("required arguments were not provided")
            && out.stderr.contains("<--tenant <TENANT>|--key <KEY>>"),
        "{out}"
    );
    let out = cp
        .run(&[
            "limit",
            "remove",
            "--tenant",
            "acme",
            "--key",
            "key_0000000000000000",
        ])
        .await;
    assert!(out.usage_error().contains("cannot be used with"), "{out}");
    let out = cp
        .run(&["tenant", "update", "acme", "--on-cp-loss", "maybe"])
        .await;
    assert!(out.usage_error().contains("neither open nor closed"), "{out}");
    let out = cp.run(&["tenant", "update", "acme"]).await;
    assert!(
        out.usage_error().contains("required arguments were not provided")
            && out.stderr.contains("--on-cp-loss <open|closed>"),
        "{out}"
    );

    let after = json!({
        "version": cp.version().await,
        "limits": cp.list(&["limit", "list"]).await,
        "caps": cp.list(&["cap", "list"]).await,
        "tenants": cp.list(&["tenant", "list"]).await,
    });
    assert_eq!(after, before);
}

// ---------------------------------------------------------------------------------------------
// Admin identities and the audit log
// ---------------------------------------------------------------------------------------------

/// Every field `admin create --json` prints.
const CREATED_ADMIN_FIELDS: [&str; 6] = ["name", "role", "tenant", "token", "token_prefix", "created_at"];

/// Creates an admin identity through the CLI (`--json`) and returns its token.
async fn create_admin(cp: &TestControlPlane, args: &[&str]) -> String {
    let created = cp.list(&[&["admin", "create"][..], args].concat()).await;
    for field in CREATED_ADMIN_FIELDS {
        assert!(created.get(field).is_some(), "{field} in {created}");
    }
    let token = created["token"].as_str().expect("a token").to_owned();
    assert!(token.starts_with("drv_admin_"), "{created}");
    let prefix = created["token_prefix"].as_str().expect("a prefix");
    assert!(
        !prefix.is_empty() && token.starts_with(prefix) && prefix.len() < token.len(),
        "{created}"
    );
    token
}

/// The records `drover audit ... --json` (or `export`) printed: one JSON object per line.
#[track_caller]
fn json_lines(out: &Output) -> Vec<Value> {
    out.ok()
        .lines()
        .map(|line| {
            let record = parse_json(line, out);
            assert!(record.is_object(), "one object per line:\n{out}");
            record
        })
        .collect()
}

/// The first record for `rpc` on `target`.
#[track_caller]
fn record_of<'a>(records: &'a [Value], rpc: &str, target: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["rpc"] == rpc && r["target"] == target)
        .unwrap_or_else(|| panic!("a {rpc} record on {target} in {records:#?}"))
}

#[tokio::test]
async fn admin_identities_are_created_listed_and_revoked() {
    let cp = TestControlPlane::start().await;
    cp.run(&["tenant", "create", "acme"]).await.ok();

    // Text: the token, once, and that it is shown only this time.
    let out = cp.run(&["admin", "create", "ops", "--role", "operator"]).await;
    let text = out.ok();
    assert!(
        text.starts_with("admin ops created with role operator")
            && text.contains("\ndrv_admin_")
            && text.contains("only time"),
        "{out}"
    );
    let ops_token = text
        .lines()
        .find(|l| l.starts_with("drv_admin_"))
        .expect("the token on a line of its own")
        .to_owned();

    // JSON, each role, one scoped to a tenant.
    let boss = create_admin(&cp, &["boss", "--role", "admin"]).await;
    let auditor = create_admin(&cp, &["auditor", "--role", "viewer"]).await;
    let scoped = create_admin(&cp, &["acme-viewer", "--role", "viewer", "--tenant", "acme"]).await;
    let tokens = [&ops_token, &boss, &auditor, &scoped];
    for (i, a) in tokens.iter().enumerate() {
        assert!(tokens[i + 1..].iter().all(|b| a != b), "tokens are distinct");
    }
    let created = cp.list(&["admin", "create", "ci", "--role", "operator"]).await;
    assert_eq!(created["name"], "ci");
    assert_eq!(created["role"], "operator");
    assert_eq!(created["tenant"], Value::Null);
    assert!(
        created["created_at"].as_str().unwrap().ends_with('Z'),
        "{created}"
    );

    // The listing: root first, every identity with its role and scope, never a token.
    let admins = cp.list(&["admin", "list"]).await;
    let rows = admins.as_array().expect("an array");
    let names: Vec<&str> = rows.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names[0], "root", "{admins}");
    for (name, role, tenant) in [
        ("root", "admin", Value::Null),
        ("ops", "operator", Value::Null),
        ("boss", "admin", Value::Null),
        ("auditor", "viewer", Value::Null),
        ("acme-viewer", "viewer", json!("acme")),
        ("ci", "operator", Value::Null),
    ] {
        let row = rows
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {admins}"));
        assert_eq!(row["role"], role, "{row}");
        assert_eq!(row["tenant"], tenant, "{row}");
        assert_eq!(row["state"], "active", "{row}");
    }
    let ops = rows.iter().find(|a| a["name"] == "ops").unwrap();
    assert_eq!(ops["created_by"], "root");
    assert!(ops_token.starts_with(ops["token_prefix"].as_str().unwrap()));
    for token in tokens {
        assert!(
            !admins.to_string().contains(token.as_str()),
            "a listing never shows a token"
        );
    }
    let out = cp.run(&["admin", "list"]).await;
    let table = out.ok();
    assert!(table.starts_with("NAME "), "{out}");
    for header in ["ROLE", "TENANT", "PREFIX", "CREATED", "CREATED BY", "STATE"] {
        assert!(table.lines().next().unwrap().contains(header), "{header}: {out}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("acme-viewer ") && l.contains(" acme ")),
        "{out}"
    );

    // An identity's token works until it is revoked; revoking twice is refused.
    let as_ops = |args: &[&str]| {
        cp.drover_without_token()
            .args(["--token", &ops_token])
            .args(args.iter())
            .run()
    };
    as_ops(&["provider", "list"]).await.ok();
    let out = cp.run(&["admin", "revoke", "ops"]).await;
    assert!(out.ok().starts_with("admin ops revoked"), "{out}");
    let admins = cp.list(&["admin", "list"]).await;
    let ops = admins
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ops")
        .unwrap();
    assert_eq!(ops["state"], "revoked", "{admins}");
    let out = as_ops(&["provider", "list"]).await;
    assert!(out.error().contains("rejected"), "{out}");
    let again = cp.run(&["admin", "revoke", "ops"]).await;
    let message = again.error();
    assert!(
        message.contains("ops") && message.contains("not found"),
        "{again}"
    );
    let root = cp.run(&["admin", "revoke", "root"]).await;
    assert!(root.error().contains("root"), "{root}");

    // Bad input is refused before anything is sent.
    let out = cp.run(&["admin", "create", "Bad", "--role", "viewer"]).await;
    assert!(out.usage_error().contains("name"), "{out}");
    let out = cp.run(&["admin", "create", "x", "--role", "owner"]).await;
    assert!(out.usage_error().contains("owner"), "{out}");
    let out = cp.run(&["admin", "create", "x"]).await;
    assert!(
        out.usage_error().contains("required arguments were not provided")
            && out.stderr.contains("--role <ROLE>"),
        "{out}"
    );
    let out = cp.run(&["admin", "create", "boss", "--role", "viewer"]).await;
    assert!(out.error().contains("boss"), "{out}");
    let out = cp
        .run(&["admin", "create", "x", "--role", "viewer", "--tenant", "nobody"])
        .await;
    assert!(out.error().contains("nobody"), "{out}");
}

#[tokio::test]
async fn a_viewer_token_reads_but_may_not_change_anything() {
    let cp = TestControlPlane::start().await;
    cp.run(&["tenant", "create", "acme"]).await.ok();
    let viewer = create_admin(&cp, &["auditor", "--role", "viewer"]).await;

    // --token and DROVER_ADMIN_TOKEN both carry it.
    let by_flag = cp
        .drover_without_token()
        .args(["--token", &viewer, "tenant", "list", "--json"])
        .run()
        .await;
    assert_eq!(parse_json(by_flag.ok(), &by_flag)[0]["name"], "acme");
    let as_viewer = || cp.drover_without_token().env("DROVER_ADMIN_TOKEN", &viewer);
    let by_env = as_viewer().args(["tenant", "list", "--json"]).run().await;
    assert_eq!(parse_json(by_env.ok(), &by_env)[0]["name"], "acme");
    as_viewer().args(["audit", "tail"]).run().await.ok();
    as_viewer().args(["audit", "verify"]).run().await.ok();

    let version = cp.version().await;
    let out = as_viewer().args(["tenant", "create", "beta"]).run().await;
    assert!(out.error().contains("may not call CreateTenant"), "{out}");
    let out = as_viewer()
        .args(["admin", "create", "sneaky", "--role", "admin"])
        .run()
        .await;
    assert!(out.error().contains("may not call CreateAdmin"), "{out}");
    assert_eq!(cp.version().await, version, "a refused call changes nothing");
    assert_eq!(cp.list(&["tenant", "list"]).await.as_array().unwrap().len(), 1);

    // The refusal is on the record, with who was refused.
    let out = cp.run(&["audit", "tail", "--json", "--actor", "auditor"]).await;
    let records = json_lines(&out);
    let refused = records
        .iter()
        .find(|r| r["rpc"] == "CreateTenant")
        .unwrap_or_else(|| panic!("a refused CreateTenant in {records:#?}"));
    assert_eq!(refused["outcome"], "permission_denied");
    assert_eq!(refused["role"], "viewer");
}

#[tokio::test]
async fn the_audit_log_is_tailed_verified_anchored_and_exported() {
    let cp = TestControlPlane::start().await;
    cp.run(&["tenant", "create", "acme"]).await.ok();
    create_admin(&cp, &["auditor", "--role", "viewer"]).await;
    cp.run(&["tenant", "suspend", "acme"]).await.ok();

    // tail --json: the newest records, oldest first, with every field, by root.
    let out = cp.run(&["audit", "tail", "--json"]).await;
    let records = json_lines(&out);
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {seqs:?}");
    let created = record_of(&records, "CreateTenant", "tenant/acme");
    assert_eq!(created["actor"], "root");
    assert_eq!(created["role"], "admin");
    assert_eq!(created["outcome"], "ok");
    assert_eq!(
        created["request"]["name"], "acme",
        "the request is embedded as JSON"
    );
    assert!(created["time"].as_str().unwrap().ends_with('Z'), "{created}");
    assert!(created["time_unix_ms"].as_i64().unwrap() > 0, "{created}");
    for field in [
        "seq",
        "time",
        "time_unix_ms",
        "actor",
        "role",
        "actor_tenant",
        "source",
        "rpc",
        "target",
        "request",
        "outcome",
        "message",
        "version",
        "unrecorded",
        "prev_hash",
        "hash",
    ] {
        assert!(created.get(field).is_some(), "{field} in {created}");
    }
    let admin = record_of(&records, "CreateAdmin", "admin/auditor");
    assert_eq!(admin["actor"], "root");
    assert!(
        !out.stdout.contains("drv_admin_"),
        "no token reaches the audit log:\n{out}"
    );
    let newest = *seqs.last().unwrap();

    // -n: the newest only; text: one readable line per record.
    let out = cp.run(&["audit", "tail", "-n", "1", "--json"]).await;
    let last = json_lines(&out);
    assert_eq!(last.len(), 1, "{out}");
    assert_eq!(last[0]["seq"], newest);
    let out = cp.run(&["audit", "tail"]).await;
    let line = out
        .ok()
        .lines()
        .find(|l| l.contains("CreateTenant"))
        .unwrap_or_else(|| panic!("a CreateTenant line:\n{out}"));
    assert!(
        line.starts_with(&format!("#{}  ", created["seq"]))
            && line.contains("  root(admin)  ")
            && line.contains("  tenant/acme  ")
            && line.ends_with("  ok"),
        "{line}"
    );
    let out = cp.run(&["audit", "tail", "--actor", "nobody", "--json"]).await;
    assert_eq!(out.ok(), "", "{out}");
    let out = cp
        .run(&["audit", "tail", "--since", "2999-01-01", "--json"])
        .await;
    assert_eq!(out.ok(), "", "{out}");

    // verify: intact, with the head as an anchor to keep.
    let out = cp.run(&["audit", "verify"]).await;
    let text = out.ok();
    assert!(
        text.starts_with(&format!("audit log intact: {newest} record(s) checked")),
        "{out}"
    );
    let anchor = text
        .lines()
        .find_map(|l| l.strip_prefix("anchor: "))
        .unwrap_or_else(|| panic!("an anchor line:\n{out}"))
        .to_owned();
    let (seq, hash) = anchor.split_once(':').expect("SEQ:HASH");
    assert_eq!(seq, newest.to_string());
    assert_eq!(hash.len(), 64, "{anchor}");
    assert_eq!(hash, last[0]["hash"], "the anchor is the newest record's hash");
    let out = cp.run(&["audit", "anchor"]).await;
    assert_eq!(out.ok(), format!("{anchor}\n"));
    let out = cp.run(&["audit", "anchor", "--json"]).await;
    let json_anchor = parse_json(out.ok(), &out);
    assert_eq!(json_anchor["anchor"], json!(anchor));
    assert_eq!(json_anchor["seq"], newest);
    let out = cp.run(&["audit", "verify", "--json"]).await;
    let report = parse_json(out.ok(), &out);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records"], newest);
    assert_eq!(report["head"]["seq"], newest);
    assert_eq!(report["head"]["hash"], hash);
    assert_eq!(report["checkpoint"]["seq"], 0);
    assert_eq!(report["first_bad_seq"], 0);

    // A later change; the anchor still verifies.
    cp.run(&["tenant", "resume", "acme"]).await.ok();
    let out = cp.run(&["audit", "verify", "--anchor", &anchor]).await;
    assert!(
        out.ok().starts_with("audit log intact") && out.ok().contains("reaches the anchor"),
        "{out}"
    );
    let out = cp.run(&["audit", "anchor"]).await;
    assert_ne!(out.ok(), format!("{anchor}\n"), "the head moved on");

    // An anchor the chain does not reach fails, and says where.
    let forged = format!("{seq}:{}", "0".repeat(64));
    let out = cp.run(&["audit", "verify", "--anchor", &forged]).await;
    assert!(out.error().contains("first_bad_seq"), "{out}");
    let out = cp.run(&["audit", "verify", "--anchor", &forged, "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    let report = parse_json(&out.stdout, &out);
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["first_bad_seq"].as_u64().unwrap() > 0, "{report}");
    assert!(!report["problem"].as_str().unwrap().is_empty(), "{report}");
    assert!(out.stderr.starts_with("error: "), "{out}");

    // A malformed anchor is a usage error, before anything is sent.
    for bad in [
        "12",
        "x:abc",
        &format!("{seq}:{}", &hash[1..]),
        &format!("-1:{hash}"),
    ] {
        let out = cp.run(&["audit", "verify", &format!("--anchor={bad}")]).await;
        assert!(out.usage_error().contains("SEQ:HASH"), "{out}");
    }

    // export: every record, one JSON object per line, each linked to the one before.
    let out = cp.run(&["audit", "export", "--format", "jsonl"]).await;
    let exported = json_lines(&out);
    assert_eq!(exported.len() as u64, newest + 1, "{out}");
    assert_eq!(exported[0]["seq"], 1);
    assert_eq!(exported[0]["prev_hash"], json!("0".repeat(64)));
    for pair in exported.windows(2) {
        assert_eq!(pair[1]["seq"], pair[0]["seq"].as_u64().unwrap() + 1);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{pair:#?}");
        assert_eq!(pair[1]["hash"].as_str().unwrap().len(), 64);
    }
    assert_eq!(
        exported.iter().find(|r| r["seq"] == newest).unwrap()["hash"],
        hash
    );
    let out = cp.run(&["audit", "export"]).await;
    assert_eq!(json_lines(&out), exported, "jsonl is the default");
    let out = cp.run(&["audit", "export", "--since", "2999-01-01"]).await;
    assert_eq!(out.ok(), "");
    let out = cp
        .run(&["audit", "export", "--since", "2000-01-01T00:00:00Z"])
        .await;
    assert_eq!(json_lines(&out), exported);
    let out = cp.run(&["audit", "export", "--format", "csv"]).await;
    assert!(out.usage_error().contains("csv"), "{out}");
}

#[tokio::test]
async fn audit_export_pages_through_more_records_than_one_page() {
    let cp = TestControlPlane::start().await;
    let mut client = pb::admin_service_client::AdminServiceClient::connect(cp.url.clone())
        .await
        .expect("admin service reachable");
    // Switching a module on and off: each call a change, each with its record.
    for i in 0..1_005 {
        let mut request = tonic::Request::new(pb::SetModuleRequest {
            name: "rate_limit".into(),
            enabled: i % 2 == 0,
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {TOKEN}").parse().expect("header"),
        );
        client.set_module(request).await.expect("module set");
    }
    let out = cp.run(&["audit", "export"]).await;
    let exported = json_lines(&out);
    assert_eq!(exported.len(), 1_005);
    for (i, pair) in exported.windows(2).enumerate() {
        assert_eq!(pair[0]["seq"], i as u64 + 1);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let out = cp.run(&["audit", "tail", "-n", "1000", "--json"]).await;
    let tail = json_lines(&out);
    assert_eq!(tail.len(), 1_000);
    assert_eq!(tail[0]["seq"], 6);
    assert_eq!(tail[999]["seq"], 1_005);
    let out = cp.run(&["audit", "tail", "-n", "1001"]).await;
    assert!(out.usage_error().contains("1001"), "{out}");
}

/// A `drover` process left running, its stdout read line by line.
struct Running {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    args: String,
}

impl Drover {
    /// Starts the command without waiting for it; its stdout arrives a line at a time.
    fn spawn(self) -> Running {
        let Drover { mut cmd, args, .. } = self;
        let mut child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("drover starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            args: args.join(" "),
        }
    }
}

impl Running {
    /// Lines until one satisfies `wanted` (returned with those before it); fails the test if
    /// none does within `COMMAND_TIMEOUT` or the output ends first.
    async fn until(&mut self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let done = wanted(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Ok(None) => panic!("`drover {}` ended its output early: {seen:#?}", self.args),
                Err(_) => panic!(
                    "`drover {}` did not print the line wanted within {COMMAND_TIMEOUT:?}: {seen:#?}",
                    self.args
                ),
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit status.
    async fn interrupt(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -INT failed");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "`drover {}` did not stop within {COMMAND_TIMEOUT:?} of SIGINT",
                self.args
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn audit_tail_follow_prints_each_new_record_once_until_ctrl_c() {
    let cp = TestControlPlane::start().await;
    cp.run(&["tenant", "create", "before"]).await.ok();
    let mut follow = cp.drover().args(["audit", "tail", "--follow", "--json"]).spawn();
    let is = |target: &'static str| move |line: &str| line.contains(&format!("\"target\":\"{target}\""));

    // The backlog first, then each change as it is made.
    let mut lines = follow.until(is("tenant/before")).await;
    cp.run(&["tenant", "create", "during"]).await.ok();
    lines.extend(follow.until(is("tenant/during")).await);
    create_admin(&cp, &["watcher", "--role", "viewer"]).await;
    lines.extend(follow.until(is("admin/watcher")).await);

    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every record once, in order: {seqs:?}"
    );
    let during = records.iter().find(|r| r["target"] == "tenant/during").unwrap();
    assert_eq!(during["actor"], "root");
    assert_eq!(during["rpc"], "CreateTenant");

    // Ctrl-C ends it cleanly.
    let status = follow.interrupt().await;
    assert!(status.success(), "exit 0 on Ctrl-C, got {status}");

    // Text follow with --actor: only that actor's records.
    let watcher = create_admin(&cp, &["watcher2", "--role", "viewer"]).await;
    let mut follow = cp
        .drover()
        .args(["audit", "tail", "-f", "-n", "0", "--actor", "watcher2"])
        .spawn();
    // A refused call by watcher2, retried until the follower (which starts at the head) has
    // seen one: its stream may begin after the first attempt.
    let refused = async {
        loop {
            let out = cp
                .drover_without_token()
                .args(["--token", &watcher, "tenant", "create", "nope"])
                .run()
                .await;
            assert_eq!(out.status.code(), Some(1), "{out}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let seen = tokio::select! {
        seen = follow.until(|l| l.contains("CreateTenant")) => seen,
        () = refused => unreachable!(),
    };
    let line = seen.last().unwrap();
    assert!(
        line.starts_with('#') && line.contains("  watcher2(viewer)  ") && line.contains("permission_denied"),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|l| l.contains("watcher2")), "{seen:#?}");
}
