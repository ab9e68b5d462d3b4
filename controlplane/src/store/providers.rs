//! The `providers` table: upstream providers and their credentials.
//!
//! A credential is either the name of an environment variable on the data planes
//! (`api_key_env`) or the key itself, encrypted under the master key (`api_key_enc`); never
//! both. Decrypted keys leave this file only inside a snapshot. `api_version` (Azure OpenAI's
//! `api-version`) is NULL when the provider sets none, and `responses_api` (relay or translate)
//! when it takes its kind's default.

use drover_proto::model::{
    Credential, InvalidPolicy, Provider, ProviderKind, ResponsesApi, Secret, parse_base_url, quoted,
    validate_api_version,
};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::crypto::Cipher;
use crate::error::StoreError;

/// What the stored key of provider `name` is bound to, so it decrypts for that provider only.
fn key_context(name: &str) -> String {
    format!("api key of provider {name:?}")
}

/// Adds `provider`, or replaces the one of the same name when `replace` is set.
pub(super) fn upsert(
    conn: &Connection,
    cipher: &Cipher,
    provider: &Provider,
    replace: bool,
) -> Result<(), StoreError> {
    let old_kind = kind(conn, &provider.name)?;
    if !replace && old_kind.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "provider {:?} (use replace to overwrite it)",
            provider.name
        )));
    }
    // A replacement of another kind must still be able to carry its routes' models. One of the
    // same kind changes nothing for them (a target stored by an older version that the rules
    // now refuse does not block, say, a key rotation).
    let kind_changes = old_kind.is_some_and(|old| old != provider.kind);
    if kind_changes
        && let Some((alias, reason)) = super::routes::first_unfit_target(conn, &provider.name, provider.kind)?
    {
        return Err(InvalidPolicy::new(
            format!("provider {:?}/kind", provider.name),
            format!(
                "route {} targets this provider with a model it cannot carry: {reason}; change the route first",
                quoted(&alias)
            ),
        )
        .into());
    }
    let (env, enc) = match &provider.credential {
        Credential::None => (None, None),
        Credential::Env(var) => (Some(var.as_str()), None),
        Credential::Key(key) => (
            None,
            Some(cipher.encrypt(&key_context(&provider.name), key.expose().as_bytes())?),
        ),
    };
    // An update in place (not delete + insert) keeps the routes' foreign keys valid.
    conn.execute(
        "INSERT INTO providers (name, kind, base_url, api_key_env, api_key_enc, api_version, responses_api)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, base_url = excluded.base_url,
             api_key_env = excluded.api_key_env, api_key_enc = excluded.api_key_enc,
             api_version = excluded.api_version, responses_api = excluded.responses_api",
        params![
            provider.name,
            provider.kind.as_str(),
            provider.base_url.as_str(),
            env,
            enc,
            provider.api_version,
            provider.responses_api.map(ResponsesApi::as_str)
        ],
    )?;
    Ok(())
}

/// Removes a provider. The caller checks first that no route uses it.
pub(super) fn remove(conn: &Connection, name: &str) -> Result<(), StoreError> {
    match conn.execute("DELETE FROM providers WHERE name = ?1", [name])? {
        0 => Err(StoreError::NotFound(format!("provider {name:?}"))),
        _ => Ok(()),
    }
}

/// The kind of provider `name`, if it exists.
pub(super) fn kind(conn: &Connection, name: &str) -> Result<Option<ProviderKind>, StoreError> {
    let kind: Option<String> = conn
        .query_row("SELECT kind FROM providers WHERE name = ?1", [name], |row| {
            row.get(0)
        })
        .optional()?;
    kind.map(|k| ProviderKind::parse(&k).map_err(|e| StoreError::Corrupt(format!("provider {name:?}: {e}"))))
        .transpose()
}

/// Every provider, by name, with its key decrypted.
pub(crate) fn load_all(conn: &Connection, cipher: &Cipher) -> Result<Vec<Provider>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, kind, base_url, api_key_env, api_key_enc, api_version, responses_api FROM providers
         ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    let mut providers = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let kind: String = row.get(1)?;
        let base_url: String = row.get(2)?;
        let env: Option<String> = row.get(3)?;
        let enc: Option<Vec<u8>> = row.get(4)?;
        let api_version: Option<String> = row.get(5)?;
        let responses_api: Option<String> = row.get(6)?;
        let corrupt = |what: String| StoreError::Corrupt(format!("provider {name:?}: {what}"));
        let kind = ProviderKind::parse(&kind).map_err(|e| corrupt(e.to_string()))?;
        let base_url = parse_base_url(&base_url).map_err(|e| corrupt(e.to_string()))?;
        let credential = match (env, enc) {
            (None, None) => Credential::None,
            (Some(var), None) => Credential::Env(var),
            (None, Some(blob)) => {
                let key = cipher.decrypt(&key_context(&name), &blob)?;
                let key = String::from_utf8(key).map_err(|_| corrupt("api key is not UTF-8".into()))?;
                Credential::Key(Secret::new(key))
            }
            (Some(_), Some(_)) => return Err(corrupt("both an env var and a stored key".into())),
        };
        if let Some(v) = &api_version {
            if kind != ProviderKind::Azure {
                return Err(corrupt(format!("api_version {v:?} on a {kind} provider")));
            }
            validate_api_version(v).map_err(|e| corrupt(e.to_string()))?;
        }
        let responses_api = responses_api
            .map(|mode| {
                ResponsesApi::check(kind)?;
                ResponsesApi::parse(&mode)
            })
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?;
        providers.push(Provider {
            name,
            kind,
            base_url,
            credential,
            api_version,
            responses_api,
        });
    }
    Ok(providers)
}
