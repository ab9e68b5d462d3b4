//! Phase `authenticate`: who is calling, from the virtual key the caller presents.
//!
//! A key comes as `Authorization: Bearer KEY` (OpenAI SDKs), `x-api-key: KEY` (Anthropic SDKs)
//! or `api-key: KEY` (Azure OpenAI SDKs). With the `auth` module on, a request needs a usable
//! key and a key may use only the models its allow-list names; with it off, nothing is refused:
//! a usable key is still attributed (tenant and key on the usage record, the tenant's cache
//! partition) and anything else is ignored. The key never goes upstream: the
//! provider's credential replaces every one of these headers.

use drover_proto::model::now_unix_ms;

use drover_proto::model::{Module, is_secret_shaped};
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::error::ProxyError;
use crate::policy::Policy;
use crate::policy::tenancy::{Found, Identity};

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No usable key (only when the `auth` module is off).
    Anonymous,
    Key(Identity),
}

impl Caller {
    /// The response cache partition: the tenant's, or the shared one of anonymous callers.
    pub fn partition(&self) -> &str {
        match self {
            Caller::Anonymous => "",
            Caller::Key(id) => &id.tenant.partition,
        }
    }

    /// Whether the caller may use `model` as it wrote it (an alias or `provider/model`) under
    /// `policy`: only with the `auth` module on does a key's allow-list refuse anything.
    pub fn may_use(&self, policy: &Policy, model: &str) -> bool {
        match self {
            Caller::Key(id) if policy.config.modules.is_enabled(Module::Auth) => id.key.allows(model),
            _ => true,
        }
    }
}

/// The secret the caller presents, if any: the first of the three headers that holds
/// something shaped like a key, else the first that holds anything.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let others = ["x-api-key", "api-key"]
        .into_iter()
        .map(|name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim));
    let candidates = std::iter::once(bearer)
        .chain(others)
        .flatten()
        .filter(|s| !s.is_empty());
    let mut first = None;
    for c in candidates {
        if is_secret_shaped(c) {
            return Some(c);
        }
        first.get_or_insert(c);
    }
    first
}

/// Phase `authenticate`.
pub fn authenticate(policy: &Policy, headers: &HeaderMap) -> Result<Caller, ProxyError> {
    let required = policy.config.modules.is_enabled(Module::Auth);
    let Some(secret) = presented(headers) else {
        return if required {
            Err(ProxyError::Unauthenticated {
                reason: "missing API key: send a Drover key as `Authorization: Bearer KEY`, `x-api-key` or `api-key`",
            })
        } else {
            Ok(Caller::Anonymous)
        };
    };
    let refused = |reason| {
        if required {
            Err(ProxyError::Unauthenticated { reason })
        } else {
            Ok(Caller::Anonymous)
        }
    };
    match policy.tenancy.find(secret, now_unix_ms()) {
        Found::Key(identity) => Ok(Caller::Key(identity)),
        Found::Unknown => refused("invalid API key"),
        Found::Expired => refused("API key expired"),
        Found::Suspended => refused("the API key's tenant is suspended"),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_key_comes_from_any_of_the_three_headers() {
        let key = format!("drv_{}", "a".repeat(43));
        assert_eq!(
            presented(&headers(&[("authorization", &format!("Bearer {key}"))])),
            Some(key.as_str())
        );
        assert_eq!(presented(&headers(&[("x-api-key", &key)])), Some(key.as_str()));
        assert_eq!(presented(&headers(&[("api-key", &key)])), Some(key.as_str()));
        // A provider key in one header does not hide a Drover key in another.
        assert_eq!(
            presented(&headers(&[
                ("authorization", "Bearer sk-provider"),
                ("x-api-key", &key)
            ])),
            Some(key.as_str())
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer sk-provider")])),
            Some("sk-provider")
        );
        assert_eq!(presented(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented(&headers(&[("x-api-key", "  ")])), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }
}
