//! The `prices` table: USD per million tokens, per model.

use drover_proto::model::Price;
use rusqlite::{Connection, params};

use crate::error::StoreError;

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

/// Removes the price of `model`.
pub(super) fn remove(conn: &Connection, model: &str) -> Result<(), StoreError> {
    match conn.execute("DELETE FROM prices WHERE model = ?1", [model])? {
        0 => Err(StoreError::NotFound(format!("price of model {model:?}"))),
        _ => Ok(()),
    }
}

/// Every price, by model.
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
    Ok(prices)
}
