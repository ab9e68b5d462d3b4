//! The complete policy as the data planes receive it, read from the store.
//!
//! The store thread loads a snapshot inside the transaction of every change (so a snapshot that
//! cannot be built, e.g. under a wrong master key, aborts the change) and publishes it on a
//! `tokio::sync::watch` channel after the commit. Readers (Watch streams, list RPCs, Status)
//! see the latest published snapshot; `watch` collapses bursts of changes into the last one.

use std::sync::Arc;

use drover_proto::model::Snapshot;
use rusqlite::Connection;

use crate::error::StoreError;
use crate::store::crypto::Cipher;
use crate::store::{meta, modules, prices, providers, routes};

/// The receiving end of the published snapshots. Always holds one: the store publishes its
/// state when it opens.
pub type Snapshots = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// Reads the whole policy, with stored keys decrypted.
pub(crate) fn load(conn: &Connection, cipher: &Cipher) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        store_id: meta::store_id(conn)?,
        version: meta::version(conn)?,
        providers: providers::load_all(conn, cipher)?,
        routes: routes::load_all(conn)?,
        prices: crate::prices::merge(prices::load_all(conn)?)
            .into_iter()
            .map(|(price, _)| price)
            .collect(),
        modules: modules::load(conn)?,
    })
}
