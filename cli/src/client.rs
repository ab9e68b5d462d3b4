//! The connection to the control plane's admin API: where it is, which admin token to present,
//! and how a failed call reads on a terminal. What to call is up to `commands`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use drover_controlplane::token_file_for;
use drover_proto::limits::{MAX_POLICY_MESSAGE_BYTES, MAX_REQUEST_BYTES};
use drover_proto::model::Secret;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::tls::{self, CaBundle, Trust};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Where the CLI looks for the admin API unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// Database whose token file is read when no token is given.
pub const DEFAULT_DB: &str = "drover.db";
/// How long to wait for the TCP/HTTP2 connection to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Options every command shares.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Address of the control plane's admin API; https:// for a control plane serving TLS.
    #[arg(long, global = true, env = "DROVER_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,

    /// PEM CA bundle that an https:// server's certificate must chain to, instead of the
    /// built-in webpki (Mozilla) roots.
    #[arg(long, global = true, env = "DROVER_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Admin token. Without one, the token file that `drover serve` created beside --db is used.
    #[arg(
        long,
        global = true,
        env = "DROVER_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_secret
    )]
    pub token: Option<Secret>,

    /// SQLite database of the control plane (`serve`), and where its admin token file is looked for.
    #[arg(long, global = true, env = "DROVER_DB", default_value = DEFAULT_DB, value_name = "PATH")]
    pub db: PathBuf,
}

/// Clap parser for a secret given on the command line or in the environment (never printed).
pub fn parse_secret(raw: &str) -> Result<Secret, String> {
    Ok(Secret::new(raw))
}

/// Which admin token the CLI presents, and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `DROVER_ADMIN_TOKEN`.
    Given(Secret),
    /// The token file beside the database.
    File(PathBuf, Secret),
    /// None given, and no token file at this path.
    Missing(PathBuf),
}

impl TokenSource {
    /// `--token`/`DROVER_ADMIN_TOKEN` first, then the token file beside `db`.
    pub fn resolve(given: Option<&Secret>, db: &Path) -> anyhow::Result<Self> {
        if let Some(token) = given.filter(|t| !t.expose().trim().is_empty()) {
            return Ok(TokenSource::Given(Secret::new(token.expose().trim())));
        }
        let path = token_file_for(db);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                if token.is_empty() {
                    bail!("the admin token file {} is empty", path.display());
                }
                Ok(TokenSource::File(path, Secret::new(token)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(TokenSource::Missing(path)),
            Err(e) => bail!("cannot read the admin token file {}: {e}", path.display()),
        }
    }

    fn secret(&self) -> Option<&Secret> {
        match self {
            TokenSource::Given(s) | TokenSource::File(_, s) => Some(s),
            TokenSource::Missing(_) => None,
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    fn new(token: Option<&Secret>) -> anyhow::Result<Self> {
        let Some(token) = token else {
            return Ok(BearerToken(None));
        };
        let mut value = AsciiMetadataValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| anyhow!("the admin token contains characters that cannot be sent in a header"))?;
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The generated admin client, with the bearer token on every call.
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

/// A connected admin client and what is needed to explain its failures.
pub struct Client {
    pub admin: AdminClient,
    server: String,
    token: TokenSource,
}

impl Client {
    /// Resolves the token, then connects (5 s timeout). Fails with one readable line.
    pub async fn connect(args: &GlobalArgs) -> anyhow::Result<Self> {
        let server = normalize_server(&args.server)?;
        let trust = trust(&server, args.ca.as_deref())?;
        let token = TokenSource::resolve(args.token.as_ref(), &args.db)?;
        let auth = BearerToken::new(token.secret())?;
        let endpoint = Endpoint::from_shared(server.clone())
            .map_err(|_| anyhow!("--server {server:?} is not a valid URL"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let endpoint = tls::client_endpoint(endpoint, &trust)
            .map_err(|e| anyhow!("--server {server}: {}", innermost(&e)))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!(connect_failed(&server, &e)))?;
        let admin = AdminServiceClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES);
        Ok(Client { admin, server, token })
    }

    /// Turns a failed call into the one line the user sees.
    pub fn error(&self, status: Status) -> anyhow::Error {
        anyhow!(describe_status(&status, &self.server, &self.token))
    }
}

/// Items asked for at once by the list commands.
pub const PAGE_SIZE: u32 = 1_000;

/// Every item of a paginated list: `page` fetches the page of a token (empty: the first) and
/// returns its items and the next page's token (empty: none).
pub async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// Which certificates the server may present: those chaining to `--ca`, else the webpki
/// roots. `--ca` is refused for a plaintext server, where it would silently do nothing.
fn trust(server: &str, ca: Option<&Path>) -> anyhow::Result<Trust> {
    let Some(ca) = ca else {
        return Ok(Trust::WebPki);
    };
    if !server.starts_with("https://") {
        bail!(
            "--ca {} is for a control plane reached over TLS; --server {server} is not an https:// URL",
            ca.display()
        );
    }
    Ok(Trust::Ca(CaBundle::load(ca)?))
}

/// Accepts `host:port` for `http://host:port`, and `https://` URLs; refuses other schemes
/// with a clear message.
fn normalize_server(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.is_empty() {
        bail!("--server must not be empty");
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Ok(format!("http://{raw}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" if !rest.is_empty() => Ok(raw.to_owned()),
        _ => bail!("--server {raw:?} must be an http:// or https:// URL, e.g. {DEFAULT_SERVER}"),
    }
}

fn unreachable(server: &str) -> String {
    format!("cannot reach the control plane at {server} (is it running?)")
}

/// Why connecting failed, in one line. Refused or unreachable reads as before; anything
/// else (a certificate not trusted, a plaintext server answering TLS) says what went wrong.
fn connect_failed(server: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
            )
        {
            return unreachable(server);
        }
        cause = c.source();
    }
    let why = innermost(e);
    if server.starts_with("https://") {
        format!("cannot connect to the control plane at {server} over TLS: {why}")
    } else {
        format!(
            "cannot connect to the control plane at {server}: {why} (does it serve TLS? then use https://)"
        )
    }
}

/// The last error in a chain of sources: the one that says what actually happened.
fn innermost<'a>(e: &'a (dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The message for a failed admin call. Statuses built locally by the transport carry an error
/// source; statuses sent by the control plane do not, and their message is shown as is.
pub fn describe_status(status: &Status, server: &str, token: &TokenSource) -> String {
    let local = std::error::Error::source(status).is_some();
    let message = || {
        if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_owned()
        }
    };
    match status.code() {
        Code::Unavailable | Code::Unknown if local => unreachable(server),
        Code::Unavailable => format!("the control plane at {server} is unavailable: {}", message()),
        // A TLS listener answering a plaintext HTTP/2 preface.
        Code::Internal if local && server.starts_with("http://") => format!(
            "the connection to the control plane at {server} failed: {} (does it serve TLS? then use https://)",
            message()
        ),
        // The client's own timeout surfaces as CANCELLED.
        Code::DeadlineExceeded | Code::Cancelled => format!(
            "the control plane at {server} did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ),
        // An identity whose role or tenant scope does not reach the call: the control plane
        // names the identity, the call and what it would need.
        Code::PermissionDenied if !status.message().is_empty() => message(),
        Code::Unauthenticated | Code::PermissionDenied => match token {
            TokenSource::Given(_) => {
                "the admin token was rejected (set DROVER_ADMIN_TOKEN or --token)".to_owned()
            }
            TokenSource::File(path, _) => format!(
                "the admin token in {} was rejected (set DROVER_ADMIN_TOKEN or --token)",
                path.display()
            ),
            TokenSource::Missing(path) => format!(
                "no admin token: set DROVER_ADMIN_TOKEN or --token (no token file at {}; \
                 point --db at the control plane's database to use its token file)",
                path.display()
            ),
        },
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted => message(),
        Code::Unimplemented => {
            format!("the control plane at {server} does not support this request (is it an older version?)")
        }
        _ => format!("the control plane failed: {}", message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI finds the token where the control plane writes it: beside the database, with
    /// the extension replaced by `admin-token`.
    #[test]
    fn token_file_sits_beside_the_database() {
        assert_eq!(
            token_file_for(Path::new("drover.db")),
            PathBuf::from("drover.admin-token")
        );
        assert_eq!(
            token_file_for(Path::new("/var/lib/drover/state.sqlite3")),
            PathBuf::from("/var/lib/drover/state.admin-token")
        );
        assert_eq!(
            token_file_for(Path::new("data/drover")),
            PathBuf::from("data/drover.admin-token")
        );
        assert_eq!(
            token_file_for(Path::new("a.b/drover.db")),
            PathBuf::from("a.b/drover.admin-token")
        );
    }

    #[test]
    fn given_token_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        std::fs::write(dir.path().join("drover.admin-token"), "from-file\n").unwrap();

        let given = Secret::new("from-flag");
        assert_eq!(
            TokenSource::resolve(Some(&given), &db).unwrap(),
            TokenSource::Given(Secret::new("from-flag"))
        );
        assert_eq!(
            TokenSource::resolve(None, &db).unwrap(),
            TokenSource::File(dir.path().join("drover.admin-token"), Secret::new("from-file"))
        );
        // An empty DROVER_ADMIN_TOKEN counts as not set.
        assert!(matches!(
            TokenSource::resolve(Some(&Secret::new("")), &db).unwrap(),
            TokenSource::File(..)
        ));
    }

    #[test]
    fn missing_and_empty_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        assert_eq!(
            TokenSource::resolve(None, &db).unwrap(),
            TokenSource::Missing(dir.path().join("x.admin-token"))
        );
        std::fs::write(dir.path().join("x.admin-token"), " \n").unwrap();
        let err = TokenSource::resolve(None, &db).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn bearer_header_is_added() {
        let mut auth = BearerToken::new(Some(&Secret::new("t0k"))).unwrap();
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer t0k");

        let mut none = BearerToken::new(None).unwrap();
        assert!(
            none.call(Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );

        assert!(BearerToken::new(Some(&Secret::new("bad\ntoken"))).is_err());
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            normalize_server("http://127.0.0.1:50051/").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            normalize_server("localhost:50051").unwrap(),
            "http://localhost:50051"
        );
        assert_eq!(normalize_server("https://cp:50051/").unwrap(), "https://cp:50051");
        assert!(
            normalize_server("ftp://cp")
                .unwrap_err()
                .to_string()
                .contains("must be an http:// or https:// URL")
        );
        assert!(normalize_server("").is_err());
    }

    #[test]
    fn a_ca_bundle_needs_an_https_server_and_a_readable_file() {
        assert!(matches!(trust("http://cp:1", None).unwrap(), Trust::WebPki));
        assert!(matches!(trust("https://cp:1", None).unwrap(), Trust::WebPki));
        let e = trust("http://cp:1", Some(Path::new("ca.pem")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--ca ca.pem is for a control plane reached over TLS; --server http://cp:1 is not an https:// URL"
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = trust("https://cp:1", Some(&missing)).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read the CA bundle") && e.contains("missing.pem"),
            "{e}"
        );
    }

    #[test]
    fn connect_failures_say_why_in_one_line() {
        let refused = std::io::Error::from(ErrorKind::ConnectionRefused);
        assert_eq!(
            connect_failed("https://cp:1", &refused),
            "cannot reach the control plane at https://cp:1 (is it running?)"
        );
        let untrusted = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            connect_failed("https://cp:1", &untrusted),
            "cannot connect to the control plane at https://cp:1 over TLS: invalid peer certificate: UnknownIssuer"
        );
        let closed = std::io::Error::other("connection closed");
        assert!(
            connect_failed("http://cp:1", &closed).ends_with("(does it serve TLS? then use https://)"),
            "{}",
            connect_failed("http://cp:1", &closed)
        );
    }

    #[test]
    fn statuses_read_as_one_clear_line() {
        let server = "http://127.0.0.1:1";
        let given = TokenSource::Given(Secret::new("x"));
        let transport = Status::from_error(Box::new(std::io::Error::other("connection refused")));
        assert_eq!(transport.code(), Code::Unknown);
        assert_eq!(
            describe_status(&transport, server, &given),
            "cannot reach the control plane at http://127.0.0.1:1 (is it running?)"
        );
        assert_eq!(
            describe_status(&Status::unauthenticated("bad token"), server, &given),
            "the admin token was rejected (set DROVER_ADMIN_TOKEN or --token)"
        );
        let missing = TokenSource::Missing(PathBuf::from("drover.admin-token"));
        let msg = describe_status(&Status::unauthenticated(""), server, &missing);
        assert!(
            msg.starts_with("no admin token: set DROVER_ADMIN_TOKEN or --token"),
            "{msg}"
        );
        assert!(msg.contains("drover.admin-token"), "{msg}");
        for status in [
            Status::invalid_argument("route \"x\"/targets: a route needs at least one target"),
            Status::not_found("route \"x\"/targets: a route needs at least one target"),
            Status::already_exists("route \"x\"/targets: a route needs at least one target"),
            Status::failed_precondition("route \"x\"/targets: a route needs at least one target"),
        ] {
            assert_eq!(
                describe_status(&status, server, &given),
                "route \"x\"/targets: a route needs at least one target"
            );
        }
        assert!(
            describe_status(&Status::unavailable("store is down"), server, &given).contains("store is down")
        );
        assert!(describe_status(&Status::internal("boom"), server, &given).contains("boom"));
        let mut broken = Status::internal("h2 protocol error");
        broken.set_source(std::sync::Arc::new(std::io::Error::other("h2 protocol error")));
        assert_eq!(
            describe_status(&broken, server, &given),
            "the connection to the control plane at http://127.0.0.1:1 failed: h2 protocol error \
             (does it serve TLS? then use https://)"
        );
    }
}
