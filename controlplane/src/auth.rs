//! Who may call the gRPC services: the admin API's guard (the bootstrap token or an admin
//! identity's, and the role check of `roles::RULES`), the data plane token, and where the
//! bootstrap token comes from.
//!
//! Tokens travel as `authorization: Bearer TOKEN`. The bootstrap and data plane tokens are
//! compared in constant time; an identity's token is looked up by its SHA-256 (a token has 190
//! random bits, so its hash reveals nothing to time). Tokens are never logged. Reflection and
//! health are not behind a token.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use drover_proto::model::Secret;
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use crate::audit_api::{self, Caller, Refusals};
use crate::config::token_file_for;
use crate::error::StartError;
use crate::roles::{self, Identity};
use crate::secret_file;
use crate::store::admins::Identities;

/// Prefix of generated admin tokens, so a leaked one is recognisable (e.g. by secret scanners).
const ADMIN_TOKEN_PREFIX: &str = "drv_admin_";
const ADMIN_TOKEN_RANDOM_LEN: usize = 32;

/// The admin token and, if it was generated now, the file it was written to.
pub(crate) struct AdminToken {
    pub token: Secret,
    pub created_file: Option<PathBuf>,
}

/// The configured admin token; else the token file beside the database; else a new token,
/// written to that file (mode 0600). Blocking file I/O: call off the async workers.
pub(crate) fn resolve_admin_token(
    configured: Option<&str>,
    db_path: &Path,
) -> Result<AdminToken, StartError> {
    if let Some(token) = configured {
        return Ok(AdminToken {
            token: non_empty("the admin token", token)?,
            created_file: None,
        });
    }
    let path = token_file_for(db_path);
    let (token, created) = secret_file::load_or_create(&path, generate_admin_token)?;
    Ok(AdminToken {
        token: Secret::new(token),
        created_file: created.then_some(path),
    })
}

/// A checked optional token from the configuration: present means non-empty.
pub(crate) fn non_empty(what: &str, token: &str) -> Result<Secret, StartError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(StartError::Config(format!("{what} must not be empty")));
    }
    Ok(Secret::new(token))
}

/// A new admin token: `drv_admin_` and 32 random characters (about 190 bits).
pub(crate) fn generate_admin_token() -> String {
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(ADMIN_TOKEN_RANDOM_LEN)
        .map(char::from)
        .collect();
    format!("{ADMIN_TOKEN_PREFIX}{random}")
}

/// A tonic interceptor that admits requests bearing one of its tokens.
#[derive(Clone)]
pub struct TokenCheck {
    tokens: Arc<[Secret]>,
    refusal: &'static str,
}

impl TokenCheck {
    /// Admits the data plane token and the admin token.
    pub fn dataplane(admin: &Secret, dataplane: Option<&Secret>) -> Self {
        let tokens: Vec<Secret> = std::iter::once(admin).chain(dataplane).cloned().collect();
        TokenCheck {
            tokens: tokens.into(),
            refusal: "missing or invalid data plane token",
        }
    }

    fn admits(&self, presented: &[u8]) -> bool {
        // Check every token, without stopping at the first match.
        self.tokens.iter().fold(false, |ok, token| {
            ok | constant_time_eq(token.expose().as_bytes(), presented)
        })
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match presented {
            Some(token) if self.admits(token.as_bytes()) => Ok(request),
            _ => Err(tonic::Status::unauthenticated(self.refusal)),
        }
    }
}

/// Wraps `AdminServiceServer`: authenticates each call, checks the caller's role against the
/// RPC's rule, and hands the handler a [`Caller`]; a refused call is answered here
/// (UNAUTHENTICATED or PERMISSION_DENIED) and recorded in the audit log, and never reaches the
/// service.
#[derive(Clone)]
pub struct AdminGuard<S> {
    inner: S,
    keys: Arc<GuardKeys>,
}

struct GuardKeys {
    root: Secret,
    identities: watch::Receiver<Identities>,
    refusals: Arc<Refusals>,
}

/// The prefix of every `AdminService` method path.
const ADMIN_PATH: &str = "/drover.v1.AdminService/";
/// How a refusal record names a path that is no RPC of the service.
const UNKNOWN_RPC: &str = "unknown";

impl<S> AdminGuard<S> {
    pub fn new(
        inner: S,
        root: Secret,
        identities: watch::Receiver<Identities>,
        refusals: Arc<Refusals>,
    ) -> Self {
        AdminGuard {
            inner,
            keys: Arc::new(GuardKeys {
                root,
                identities,
                refusals,
            }),
        }
    }
}

impl GuardKeys {
    /// The identity a bearer token is, if any.
    fn identify(&self, token: &str) -> Option<Identity> {
        if constant_time_eq(self.root.expose().as_bytes(), token.as_bytes()) {
            return Some(Identity::root());
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.identities.borrow().get(&hash).cloned()
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for AdminGuard<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let source = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        // The RPC's own name, never the caller's text: a refusal record names only RPCs that exist.
        let rule = request
            .uri()
            .path()
            .strip_prefix(ADMIN_PATH)
            .and_then(roles::rule_of);
        let rpc = rule.map_or(UNKNOWN_RPC, |r| r.rpc);
        let presented = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .and_then(|token| self.keys.identify(token));
        let refusal = match (presented, rule) {
            (None, _) => Err((
                audit_api::anonymous(rpc, source),
                tonic::Status::unauthenticated("missing or invalid admin token"),
            )),
            (Some(identity), Some(rule)) => match rule.refuses(&identity) {
                Some(why) => {
                    let caller = Caller { identity, source };
                    Err((caller.entry(rpc, &()), tonic::Status::permission_denied(why)))
                }
                None => Ok(Caller { identity, source }),
            },
            // Not a method of the service: tonic answers UNIMPLEMENTED.
            (Some(identity), None) => Ok(Caller { identity, source }),
        };
        match refusal {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The clone that was made ready is the one to call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err((entry, status)) => {
                let refusals = self.keys.refusals.clone();
                Box::pin(async move {
                    refusals.record(entry, &status, source).await;
                    Ok(status.into_http())
                })
            }
        }
    }
}

impl<S: NamedService> NamedService for AdminGuard<S> {
    const NAME: &'static str = S::NAME;
}

/// The token of an `authorization: Bearer TOKEN` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Equal-length inputs are compared in constant time; the length itself is not secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn request(auth: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn the_data_plane_check_takes_its_tokens_only() {
        let admin = Secret::new("admin-tok");
        let dp = Secret::new("dp-tok");
        let mut check = TokenCheck::dataplane(&admin, None);
        assert!(check.call(request(Some("Bearer admin-tok"))).is_ok());
        assert!(check.call(request(Some("bearer  admin-tok "))).is_ok());
        for bad in [
            None,
            Some("Bearer dp-tok"),
            Some("Bearer admin-to"),
            Some("Bearer admin-tokk"),
            Some("admin-tok"),
            Some("Basic admin-tok"),
            Some("Bearer "),
        ] {
            let err = check.call(request(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!err.message().contains("admin-tok"));
        }
        let mut check = TokenCheck::dataplane(&admin, Some(&dp));
        assert!(check.call(request(Some("Bearer dp-tok"))).is_ok());
        assert!(check.call(request(Some("Bearer admin-tok"))).is_ok());
        assert!(check.call(request(Some("Bearer other"))).is_err());
    }

    #[test]
    fn admin_token_is_configured_or_kept_beside_the_db() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let configured = resolve_admin_token(Some("given"), &db).unwrap();
        assert_eq!(configured.token.expose(), "given");
        assert!(configured.created_file.is_none());
        assert!(!token_file_for(&db).exists());
        assert!(resolve_admin_token(Some("  "), &db).is_err());

        let first = resolve_admin_token(None, &db).unwrap();
        assert_eq!(first.created_file.as_deref(), Some(token_file_for(&db).as_path()));
        assert!(first.token.expose().starts_with(ADMIN_TOKEN_PREFIX));
        assert_eq!(
            first.token.expose().len(),
            ADMIN_TOKEN_PREFIX.len() + ADMIN_TOKEN_RANDOM_LEN
        );
        let second = resolve_admin_token(None, &db).unwrap();
        assert_eq!(second.token, first.token);
        assert!(second.created_file.is_none());
    }
}
