//! The `modules` table: gateway module flags. A module without a row is off.

use drover_proto::model::{Module, Modules};
use rusqlite::{Connection, params};

use crate::error::StoreError;

/// Switches `module` on or off. Returns whether the flag changed.
pub(super) fn set(conn: &Connection, module: Module, enabled: bool) -> Result<bool, StoreError> {
    if load(conn)?.is_enabled(module) == enabled {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO modules (name, enabled) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled",
        params![module.as_str(), enabled],
    )?;
    Ok(true)
}

/// The flags of every module. Rows for modules this build does not know are ignored (off).
pub(crate) fn load(conn: &Connection) -> Result<Modules, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT name, enabled FROM modules")?;
    let mut rows = stmt.query([])?;
    let mut modules = Modules::default();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        if let Ok(module) = Module::parse(&name) {
            modules.set(module, row.get(1)?);
        }
    }
    Ok(modules)
}
