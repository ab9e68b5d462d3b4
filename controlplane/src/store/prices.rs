//! The `prices` table: custom prices (USD per million tokens) set through the admin API, by
//! price key (`model` or `provider/model`). The built-in defaults are not stored; they live in
//! `crate::prices` and are merged in when a snapshot is built.

use drover_proto::model::Price;
use drover_proto::pb;
use rusqlite::{Connection, params};

use crate::error::StoreError;
use crate::prices::has_default;

/// Creates or replaces the price of `price.model`.
pub(super) fn set(conn: &Connection, price: &Price) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO prices (model, input_per_mtok, output_per_mtok, cached_input_per_mtok)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (model) DO UPDATE SET input_per_mtok = excluded.input_per_mtok,
             output_per_mtok = excluded.output_per_mtok,
             cached_input_per_mtok = excluded.cached_input_per_mtok",
        params![
            price.model,
            price.input_per_mtok,
            price.output_per_mtok,
            price.cached_input_per_mtok
        ],
    )?;
    Ok(())
}

/// Removes the custom price of `model`; its built-in default, if any, applies again. A model
/// with a default but no custom price is refused: defaults can be overridden, not removed.
pub(super) fn remove(conn: &Connection, model: &str) -> Result<(), StoreError> {
    match conn.execute("DELETE FROM prices WHERE model = ?1", [model])? {
        0 if has_default(model) => Err(StoreError::NotFoundWhy(format!(
            "model {model:?} has no custom price; its built-in default price can be overridden \
             (`drover price set`) but not removed"
        ))),
        0 => Err(StoreError::NotFound(format!("price of model {model:?}"))),
        _ => Ok(()),
    }
}

/// Every custom price, by key. A stored key that the current rules refuse (e.g. one written
/// by an older build) is left out with a warning, so that it can never break a snapshot.
pub(crate) fn load_all(conn: &Connection) -> Result<Vec<Price>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok FROM prices ORDER BY model",
    )?;
    let prices = stmt
        .query_map([], |row| {
            Ok(Price {
                model: row.get(0)?,
                input_per_mtok: row.get(1)?,
                output_per_mtok: row.get(2)?,
                cached_input_per_mtok: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(prices
        .into_iter()
        .filter(|p| match Price::try_from(&pb::Price::from(p)) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(model = %p.model, error = %e, "ignoring a stored price that is no longer valid");
                false
            }
        })
        .collect())
}
