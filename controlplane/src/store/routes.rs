//! The `routes` and `route_targets` tables: aliases and their ordered, weighted targets.
//!
//! Every target must name an existing provider; that is checked here, in the transaction that
//! writes the route, and backed by a foreign key.

use std::collections::HashMap;

use drover_proto::model::{
    InvalidPolicy, ProviderKind, Route, Strategy, Target, quoted, validate_target_model,
};
use rusqlite::{Connection, params};

use super::providers;
use crate::error::StoreError;

/// Creates or replaces `route`. A target naming an unknown provider, or a model its provider's
/// kind cannot carry (see `model::validate_target_model`), is invalid input.
pub(super) fn set(conn: &Connection, route: &Route) -> Result<(), StoreError> {
    for (i, target) in route.targets.iter().enumerate() {
        let at = || format!("route {}/targets[{i}]", quoted(&route.alias));
        let Some(kind) = providers::kind(conn, &target.provider)? else {
            return Err(InvalidPolicy::new(
                format!("{}/provider", at()),
                format!("unknown provider {:?}; add it first", target.provider),
            )
            .into());
        };
        validate_target_model(kind, "model", &target.model).map_err(|e| {
            InvalidPolicy::new(
                format!("{}/{}", at(), e.field),
                format!("{} (provider {:?})", e.reason, target.provider),
            )
        })?;
    }
    conn.execute(
        "INSERT INTO routes (alias, strategy, cache_ttl_secs, retry_after_send) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (alias) DO UPDATE SET strategy = excluded.strategy,
             cache_ttl_secs = excluded.cache_ttl_secs, retry_after_send = excluded.retry_after_send",
        params![
            route.alias,
            route.strategy.as_str(),
            route.cache_ttl_secs,
            route.retry_after_send
        ],
    )?;
    conn.execute("DELETE FROM route_targets WHERE alias = ?1", [&route.alias])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO route_targets (alias, position, provider, model, weight) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (position, target) in (0i64..).zip(&route.targets) {
        insert.execute(params![
            route.alias,
            position,
            target.provider,
            target.model,
            target.weight
        ])?;
    }
    Ok(())
}

/// Removes a route and its targets.
pub(super) fn remove(conn: &Connection, alias: &str) -> Result<(), StoreError> {
    match conn.execute("DELETE FROM routes WHERE alias = ?1", [alias])? {
        0 => Err(StoreError::NotFound(format!("route {alias:?}"))),
        _ => Ok(()),
    }
}

/// The first route with a target on `provider` whose model a provider of `kind` cannot carry:
/// its alias and why. What replacing the provider with one of that kind would break.
pub(super) fn first_unfit_target(
    conn: &Connection,
    provider: &str,
    kind: ProviderKind,
) -> Result<Option<(String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT alias, model FROM route_targets WHERE provider = ?1 ORDER BY alias, position",
    )?;
    let mut rows = stmt.query([provider])?;
    while let Some(row) = rows.next()? {
        let model: String = row.get(1)?;
        if let Err(e) = validate_target_model(kind, "model", &model) {
            return Ok(Some((row.get(0)?, e.reason)));
        }
    }
    Ok(None)
}

/// Aliases of the routes with a target on `provider`, sorted.
pub(super) fn using_provider(conn: &Connection, provider: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT DISTINCT alias FROM route_targets WHERE provider = ?1 ORDER BY alias")?;
    let aliases = stmt
        .query_map([provider], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(aliases)
}

/// Every route, by alias, with its targets in order.
pub(crate) fn load_all(conn: &Connection) -> Result<Vec<Route>, StoreError> {
    let mut routes = Vec::new();
    let mut index = HashMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT alias, strategy, cache_ttl_secs, retry_after_send FROM routes ORDER BY alias",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let alias: String = row.get(0)?;
        let strategy: String = row.get(1)?;
        let cache_ttl_secs: u32 = row.get(2)?;
        let retry_after_send: bool = row.get(3)?;
        let strategy =
            Strategy::parse(&strategy).map_err(|e| StoreError::Corrupt(format!("route {alias:?}: {e}")))?;
        index.insert(alias.clone(), routes.len());
        routes.push(Route {
            alias,
            strategy,
            targets: Vec::new(),
            cache_ttl_secs,
            retry_after_send,
        });
    }
    let mut stmt = conn.prepare_cached(
        "SELECT alias, provider, model, weight FROM route_targets ORDER BY alias, position",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let alias: String = row.get(0)?;
        let Some(&i) = index.get(&alias) else {
            return Err(StoreError::Corrupt(format!("targets of missing route {alias:?}")));
        };
        routes[i].targets.push(Target {
            provider: row.get(1)?,
            model: row.get(2)?,
            weight: row.get(3)?,
        });
    }
    if let Some(empty) = routes.iter().find(|r| r.targets.is_empty()) {
        return Err(StoreError::Corrupt(format!(
            "route {:?} has no targets",
            empty.alias
        )));
    }
    Ok(routes)
}
