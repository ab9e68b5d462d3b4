//! Who may call the gRPC services: the admin token, the data plane token, and where the admin
//! token comes from.
//!
//! Tokens travel as `authorization: Bearer TOKEN` and are compared in constant time. They are
//! never logged. Reflection and health are not behind a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_proto::model::Secret;
use rand::Rng as _;
use subtle::ConstantTimeEq as _;

use crate::config::token_file_for;
use crate::error::StartError;
use crate::secret_file;

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

fn generate_admin_token() -> String {
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
    /// Admits the admin token only.
    pub fn admin(admin: &Secret) -> Self {
        TokenCheck {
            tokens: Arc::from([admin.clone()]),
            refusal: "missing or invalid admin token",
        }
    }

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
    fn admin_check_takes_the_admin_token_only() {
        let admin = Secret::new("admin-tok");
        let dp = Secret::new("dp-tok");
        let mut check = TokenCheck::admin(&admin);
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
