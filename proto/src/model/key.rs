//! Virtual keys: what callers present instead of a provider's credential. The shape of secrets
//! and ids (one definition for the control plane, which makes them, and the data plane, which
//! checks them), the rules for what the admin API accepts, and the key as a data plane receives
//! it: never the secret, only its SHA-256.

use std::collections::HashSet;

use super::limit::{Cap, Limits, caps_from_wire};
use super::{InvalidPolicy, quoted, validate_model_name};
use crate::pb;

/// Every secret starts with this, so that secret scanners can find leaked ones.
pub const SECRET_PREFIX: &str = "drv_";
/// Characters of `[A-Za-z0-9]` after the prefix: 43 of 62 symbols, 256 bits.
pub const SECRET_BODY_LEN: usize = 43;
/// Characters of a secret a key listing shows (the prefix and 6 more): enough to tell keys
/// apart, never enough to use one.
pub const SHOWN_SECRET_LEN: usize = SECRET_PREFIX.len() + 6;
/// Every key id starts with this.
pub const KEY_ID_PREFIX: &str = "key_";
/// Characters of `[A-Za-z0-9]` after the id prefix.
pub const KEY_ID_BODY_LEN: usize = 16;
/// Longest key name, bytes.
pub const MAX_KEY_NAME_LEN: usize = 128;
/// Most entries in a key's model allow-list.
pub const MAX_KEY_MODELS: usize = 256;
/// Longest grace period of a rotation, seconds (30 days).
pub const MAX_GRACE_SECS: u32 = 30 * 24 * 3600;
/// Longest caller-chosen request id, bytes.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Latest expiry accepted, Unix milliseconds (the start of year 10000).
pub const MAX_EXPIRES_UNIX_MS: i64 = 253_402_300_800_000;

fn alnum_body(s: &str, prefix: &str, len: usize) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|body| body.len() == len && body.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether `s` has the shape of a secret. Anything else cannot be a key, so it need not be
/// hashed and looked up.
pub fn is_secret_shaped(s: &str) -> bool {
    alnum_body(s, SECRET_PREFIX, SECRET_BODY_LEN)
}

/// Checks a key id: `key_` and 16 of `[A-Za-z0-9]`.
pub fn validate_key_id(field: &str, id: &str) -> Result<(), InvalidPolicy> {
    if alnum_body(id, KEY_ID_PREFIX, KEY_ID_BODY_LEN) {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            field,
            format!(
                "{} is not a key id ({KEY_ID_PREFIX} and {KEY_ID_BODY_LEN} letters or digits)",
                quoted(id)
            ),
        ))
    }
}

/// Checks a key's name: at most 128 bytes, no control characters; may be empty.
pub fn validate_key_name(field: &str, name: &str) -> Result<(), InvalidPolicy> {
    if name.len() > MAX_KEY_NAME_LEN {
        return Err(InvalidPolicy::new(
            field,
            format!("{} is longer than {MAX_KEY_NAME_LEN} bytes", quoted(name)),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidPolicy::new(
            field,
            format!("{} must not contain control characters", quoted(name)),
        ));
    }
    Ok(())
}

/// Checks a model allow-list: each entry a valid model name (an alias or `provider/model`), no
/// duplicates, at most [`MAX_KEY_MODELS`]. A violation names the entry, e.g. `models[2]`.
pub fn validate_key_models(field: &str, models: &[String]) -> Result<(), InvalidPolicy> {
    if models.len() > MAX_KEY_MODELS {
        return Err(InvalidPolicy::new(
            field,
            format!("{} entries; at most {MAX_KEY_MODELS}", models.len()),
        ));
    }
    let mut seen = HashSet::with_capacity(models.len());
    for (i, m) in models.iter().enumerate() {
        let at = format!("{field}[{i}]");
        validate_model_name(&at, m)?;
        if !seen.insert(m.as_str()) {
            return Err(InvalidPolicy::new(at, format!("{} is listed twice", quoted(m))));
        }
    }
    Ok(())
}

/// Checks an expiry for a new key: 0 (never) or a time after `now_unix_ms`.
pub fn validate_expiry(field: &str, expires_unix_ms: i64, now_unix_ms: i64) -> Result<(), InvalidPolicy> {
    if expires_unix_ms == 0 {
        return Ok(());
    }
    if expires_unix_ms <= now_unix_ms {
        return Err(InvalidPolicy::new(field, "must be in the future"));
    }
    if expires_unix_ms > MAX_EXPIRES_UNIX_MS {
        return Err(InvalidPolicy::new(field, "must be before the year 10000"));
    }
    Ok(())
}

/// Checks a caller-chosen request id: empty, or 1–128 of `[A-Za-z0-9._:-]`.
pub fn validate_request_id(field: &str, id: &str) -> Result<(), InvalidPolicy> {
    let ok = id.len() <= MAX_REQUEST_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            field,
            format!(
                "{} must be at most {MAX_REQUEST_ID_CHARS} of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
                quoted(id)
            ),
        ))
    }
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

fn digest(field: &str, bytes: &[u8]) -> Result<Digest, InvalidPolicy> {
    bytes
        .try_into()
        .map_err(|_| InvalidPolicy::new(field, format!("must be 32 bytes, not {}", bytes.len())))
}

/// A virtual key as a data plane holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualKey {
    pub id: String,
    pub tenant_id: u64,
    /// SHA-256 of the secret.
    pub hash: Digest,
    /// Aliases and `provider/model` targets it may use; empty: any.
    pub models: Vec<String>,
    /// Unix milliseconds; `None`: never.
    pub expires_unix_ms: Option<i64>,
    /// During a rotation's grace period: the previous secret's hash, and when it stops working.
    pub previous: Option<(Digest, i64)>,
    /// Rate limits of this key alone.
    pub limits: Limits,
    /// Spend caps of this key alone, at most one per period.
    pub caps: Vec<Cap>,
}

impl TryFrom<&pb::VirtualKey> for VirtualKey {
    type Error = InvalidPolicy;

    fn try_from(k: &pb::VirtualKey) -> Result<Self, InvalidPolicy> {
        let within = |e: InvalidPolicy| e.within(&format!("key {}", quoted(&k.id)));
        validate_key_id("key/id", &k.id)?;
        if k.tenant_id == 0 {
            return Err(within(InvalidPolicy::new("tenant_id", "must not be 0")));
        }
        let hash = digest("hash", &k.hash).map_err(within)?;
        validate_key_models("models", &k.models).map_err(within)?;
        let previous = if k.previous_hash.is_empty() {
            None
        } else {
            Some((
                digest("previous_hash", &k.previous_hash).map_err(within)?,
                k.previous_expires_unix_ms,
            ))
        };
        Ok(VirtualKey {
            id: k.id.clone(),
            tenant_id: k.tenant_id,
            hash,
            models: k.models.clone(),
            expires_unix_ms: (k.expires_unix_ms != 0).then_some(k.expires_unix_ms),
            previous,
            limits: Limits::try_from(k.limits.as_ref()).map_err(within)?,
            caps: caps_from_wire(&k.caps).map_err(within)?,
        })
    }
}

impl From<&VirtualKey> for pb::VirtualKey {
    fn from(k: &VirtualKey) -> Self {
        pb::VirtualKey {
            id: k.id.clone(),
            tenant_id: k.tenant_id,
            hash: k.hash.to_vec(),
            models: k.models.clone(),
            expires_unix_ms: k.expires_unix_ms.unwrap_or(0),
            previous_hash: k.previous.map(|(h, _)| h.to_vec()).unwrap_or_default(),
            previous_expires_unix_ms: k.previous.map_or(0, |(_, at)| at),
            limits: (&k.limits).into(),
            caps: k.caps.iter().map(pb::Cap::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_ids_have_one_shape() {
        let secret = format!("{SECRET_PREFIX}{}", "aB3".repeat(14) + "x");
        assert!(is_secret_shaped(&secret));
        assert!(!is_secret_shaped(&secret[..secret.len() - 1]));
        assert!(!is_secret_shaped(&format!("{secret}x")));
        assert!(!is_secret_shaped(&secret.replace('x', "-")));
        assert!(!is_secret_shaped(&secret.replace("drv_", "sk-_")));
        validate_key_id("id", "key_0123456789abcdEF").unwrap();
        for bad in [
            "key_0123456789abcde",
            "key_0123456789abcdEF0",
            "kex_0123456789abcdEF",
            "key_0123456789abcd-F",
        ] {
            assert!(validate_key_id("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_lists_name_the_bad_entry() {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        validate_key_models("models", &list(&["gpt", "openai/gpt-4o"])).unwrap();
        validate_key_models("models", &[]).unwrap();
        assert_eq!(
            validate_key_models("models", &list(&["gpt", ""]))
                .unwrap_err()
                .field,
            "models[1]"
        );
        assert_eq!(
            validate_key_models("models", &list(&["gpt", "a", "gpt"]))
                .unwrap_err()
                .field,
            "models[2]"
        );
        let many: Vec<String> = (0..=MAX_KEY_MODELS).map(|i| format!("m{i}")).collect();
        assert!(validate_key_models("models", &many).is_err());
        assert!(validate_key_models("models", &many[..MAX_KEY_MODELS]).is_ok());
    }

    #[test]
    fn names_expiries_and_request_ids() {
        validate_key_name("name", "").unwrap();
        validate_key_name("name", "ci runner").unwrap();
        assert!(validate_key_name("name", "a\u{7}").is_err());
        assert!(validate_key_name("name", &"n".repeat(129)).is_err());
        validate_expiry("expires", 0, 1_000).unwrap();
        validate_expiry("expires", 1_001, 1_000).unwrap();
        assert!(validate_expiry("expires", 1_000, 1_000).is_err());
        assert!(validate_expiry("expires", -5, 1_000).is_err());
        assert!(validate_expiry("expires", MAX_EXPIRES_UNIX_MS + 1, 1_000).is_err());
        validate_request_id("request_id", "").unwrap();
        validate_request_id("request_id", "6f1c0e2a-3b4d-4c5e-8f90-a1b2c3d4e5f6").unwrap();
        assert!(validate_request_id("request_id", "a b").is_err());
        assert!(validate_request_id("request_id", &"r".repeat(129)).is_err());
    }

    #[test]
    fn wire_keys_are_checked_and_round_trip() {
        let wire = pb::VirtualKey {
            id: "key_0123456789abcdEF".into(),
            tenant_id: 3,
            hash: vec![7; 32],
            models: vec!["gpt".into()],
            expires_unix_ms: 5,
            previous_hash: vec![9; 32],
            previous_expires_unix_ms: 6,
            limits: Some(pb::Limits {
                concurrency: 2,
                ..Default::default()
            }),
            caps: vec![],
        };
        let key = VirtualKey::try_from(&wire).unwrap();
        assert_eq!(key.previous, Some(([9; 32], 6)));
        assert_eq!(pb::VirtualKey::from(&key), wire);
        let bad = |f: fn(&mut pb::VirtualKey)| {
            let mut w = wire.clone();
            f(&mut w);
            VirtualKey::try_from(&w).unwrap_err()
        };
        assert!(bad(|w| w.hash.truncate(31)).field.ends_with("hash"));
        assert!(
            bad(|w| w.previous_hash = vec![1; 33])
                .field
                .ends_with("previous_hash")
        );
        assert!(bad(|w| w.tenant_id = 0).field.ends_with("tenant_id"));
        assert!(bad(|w| w.models.push(String::new())).field.ends_with("models[1]"));
        assert_eq!(bad(|w| w.id = "k".into()).field, "key/id");
    }
}
