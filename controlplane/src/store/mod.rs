//! The durable state: one SQLite database owned by one dedicated thread.
//!
//! Async code never touches the `Connection`. It sends a closure over a channel to the store
//! thread and awaits the answer on a oneshot (the tokio-rusqlite design), so a slow disk never
//! blocks a runtime worker. Every change runs in one `IMMEDIATE` transaction that also bumps the
//! policy version and loads the new snapshot; after the commit the store thread publishes that
//! snapshot, so snapshots are published in version order.
//!
//! This module owns the schema (`migrations`), one file per table family, and the encryption
//! of stored credentials (`crypto`). Input validation is not here: callers pass validated
//! `drover_proto::model` values; only cross-row checks (a route's providers exist, a removed
//! provider is unused) happen in the transaction.

pub(crate) mod admins;
pub(crate) mod audit;
pub mod crypto;
pub(crate) mod idempotency;
pub(crate) mod keys;
pub(crate) mod ledger;
pub(crate) mod limits;
pub(crate) mod meta;
mod migrations;
pub(crate) mod modules;
pub(crate) mod page;
pub(crate) mod prices;
pub(crate) mod providers;
pub(crate) mod routes;
mod tenancy;
pub(crate) mod tenants;
pub(crate) mod usage;

pub use tenancy::{NewSecret, TenantUpdate};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::model::{Module, Price, Provider, Route, Snapshot, now_unix_ms};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

use self::crypto::{Cipher, MasterKey};
use crate::error::StoreError;
use crate::prices::PriceSource;
use crate::snapshot::{self, Snapshots};

/// How long a statement waits for a lock held by another connection (e.g. a backup).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection (the usage queries alone have a dozen shapes).
const STATEMENT_CACHE: usize = 64;
/// Page cache, KiB (as a negative `cache_size`): the request-id index of the usage ledger is
/// written at random places (for time-ordered ids, mostly at its end); keeping its hot pages
/// in memory saves a read per record. 16 MiB keeps `drover serve` small.
const CACHE_SIZE_KIB: i64 = -16_384;
/// WAL pages before a commit checkpoints (SQLite's default is 1,000). Usage batches touch
/// random pages of the request-id index, so the default checkpoints after nearly every batch
/// and halves ingestion; larger, rarer checkpoints write each hot page once.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4_096;
/// After a checkpoint, the WAL file is truncated back to this size, bytes.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// Requests queued for the store thread before senders wait.
const QUEUE: usize = 256;

type Job = Box<dyn FnOnce(&mut Db) + Send>;

enum Msg {
    Run(Job),
    /// A usage batch; batches queued together are applied in one transaction (group commit).
    Usage(usage::Pending),
    Close,
}

/// A handle on the store. Cheap to clone; every clone talks to the same thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Msg>,
    snapshots: Snapshots,
    identities: watch::Receiver<admins::Identities>,
    audit_head: watch::Receiver<u64>,
    path: Arc<PathBuf>,
    /// The audit record a change through this handle writes with it (`Store::audited`).
    audit: Option<Arc<crate::audit::Entry>>,
}

/// The store thread itself; `close` stops it and waits until the database is closed.
pub struct StoreThread {
    tx: mpsc::Sender<Msg>,
    handle: std::thread::JoinHandle<()>,
}

/// What the store thread owns.
struct Db {
    conn: Connection,
    cipher: Cipher,
    publisher: watch::Sender<Arc<Snapshot>>,
    /// Where committed usage costs are told (`Store::subscribe_ledger`), once someone listens.
    ledger: Option<mpsc::UnboundedSender<ledger::LedgerEvent>>,
    /// The audit chain's head.
    audit: audit::Log,
    /// The admin identities in force, republished after each change to them.
    identities: watch::Sender<admins::Identities>,
}

/// What the store thread hands back once it is ready.
struct Ready {
    snapshots: Snapshots,
    identities: watch::Receiver<admins::Identities>,
    audit_head: watch::Receiver<u64>,
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `path` on a new thread, checks
    /// `key` against it, and publishes the current snapshot.
    pub async fn open(path: &Path, key: MasterKey) -> Result<(Store, StoreThread), StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let path = Arc::new(path.to_owned());
        let thread_path = path.clone();
        let handle = std::thread::Builder::new()
            .name("drover-store".into())
            .spawn(move || run(&thread_path, &key, rx, ready_tx))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the store thread: {e}")))?;
        let ready = match ready_rx.await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(StoreError::Closed);
            }
        };
        Ok((
            Store {
                tx: tx.clone(),
                snapshots: ready.snapshots,
                identities: ready.identities,
                audit_head: ready.audit_head,
                path,
                audit: None,
            },
            StoreThread { tx, handle },
        ))
    }

    /// A handle whose changes each write `entry` (completed with the outcome and the policy
    /// version) to the audit log, in the change's own transaction; a change that turns out to
    /// change nothing writes it as `unchanged`.
    pub fn audited(&self, entry: crate::audit::Entry) -> Store {
        Store {
            audit: Some(Arc::new(entry)),
            ..self.clone()
        }
    }

    /// The admin identities in force.
    pub fn identities(&self) -> watch::Receiver<admins::Identities> {
        self.identities.clone()
    }

    /// The position of the newest committed audit record, as it changes.
    pub fn audit_head(&self) -> watch::Receiver<u64> {
        self.audit_head.clone()
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A receiver of every snapshot published from now on, marked as having seen the current one.
    pub fn snapshots(&self) -> Snapshots {
        let mut rx = self.snapshots.clone();
        rx.mark_unchanged();
        rx
    }

    /// The latest published snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Runs `f` on the store thread.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = tx.send(f(db));
        });
        self.tx
            .send(Msg::Run(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in a write transaction; if it reports a change, bumps the version, commits and
    /// publishes the new snapshot. Returns the version after the call.
    async fn change<F>(&self, f: F) -> Result<u64, StoreError>
    where
        F: FnOnce(&Connection, &Cipher) -> Result<bool, StoreError> + Send + 'static,
    {
        let audit = self.audit.clone();
        self.call(move |db| db.change(audit.as_deref(), f)).await
    }

    /// Adds a provider, or replaces the one of the same name when `replace` is set.
    pub async fn add_provider(&self, provider: Provider, replace: bool) -> Result<u64, StoreError> {
        self.change(move |conn, cipher| {
            providers::upsert(conn, cipher, &provider, replace)?;
            Ok(true)
        })
        .await
    }

    /// Removes a provider; fails while a route targets it.
    pub async fn remove_provider(&self, name: String) -> Result<u64, StoreError> {
        self.change(move |conn, _| {
            let users = routes::using_provider(conn, &name)?;
            if !users.is_empty() {
                return Err(StoreError::FailedPrecondition(format!(
                    "provider {name:?} is used by route(s) {}; change or remove them first",
                    quoted_list(&users)
                )));
            }
            providers::remove(conn, &name)?;
            Ok(true)
        })
        .await
    }

    /// Creates or replaces a route; every target must name an existing provider.
    pub async fn set_route(&self, route: Route) -> Result<u64, StoreError> {
        self.change(move |conn, _| {
            routes::set(conn, &route)?;
            Ok(true)
        })
        .await
    }

    pub async fn remove_route(&self, alias: String) -> Result<u64, StoreError> {
        self.change(move |conn, _| {
            routes::remove(conn, &alias)?;
            Ok(true)
        })
        .await
    }

    pub async fn set_price(&self, price: Price) -> Result<u64, StoreError> {
        self.change(move |conn, _| {
            prices::set(conn, &price)?;
            Ok(true)
        })
        .await
    }

    /// Every price in force: the built-in defaults merged with the custom prices, with where
    /// each comes from, sorted by key.
    pub async fn list_prices(&self) -> Result<Vec<(Price, PriceSource)>, StoreError> {
        let custom = self.call(|db| prices::load_all(&db.conn)).await?;
        Ok(crate::prices::merge(custom))
    }

    /// Removes a custom price; the built-in default of the same key, if any, applies again.
    pub async fn remove_price(&self, model: String) -> Result<u64, StoreError> {
        self.change(move |conn, _| {
            prices::remove(conn, &model)?;
            Ok(true)
        })
        .await
    }

    /// Switches a module on or off. Setting the state it already has changes nothing.
    pub async fn set_module(&self, module: Module, enabled: bool) -> Result<u64, StoreError> {
        self.change(move |conn, _| modules::set(conn, module, enabled))
            .await
    }
}

impl StoreThread {
    /// Stops the store thread after the requests already queued, and waits until the database
    /// is closed. Later requests fail with `StoreError::Closed`.
    pub async fn close(self) -> Result<(), String> {
        // If the thread is already gone the send fails; joining still reports how it ended.
        let _ = self.tx.send(Msg::Close).await;
        drop(self.tx);
        let handle = self.handle;
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| format!("joining the store thread: {e}"))?
            .map_err(|_| "the store thread panicked".to_owned())
    }
}

impl Db {
    fn change<F>(&mut self, audit: Option<&crate::audit::Entry>, f: F) -> Result<u64, StoreError>
    where
        F: FnOnce(&Connection, &Cipher) -> Result<bool, StoreError>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !f(&tx, &self.cipher)? {
            // Nothing changed: the transaction rolls back, the version stays.
            drop(tx);
            let version = meta::version(&self.conn)?;
            self.record_unchanged(audit, version)?;
            return Ok(version);
        }
        let version = meta::bump(&tx, true)?;
        let snapshot = snapshot::load(&tx, &self.cipher)?;
        commit_audited(tx, &mut self.audit, audit, version)?;
        self.publisher.send_replace(Arc::new(snapshot));
        Ok(version)
    }

    /// Appends `entry` to the audit log in a transaction of its own.
    fn append_audit(
        &mut self,
        entry: &crate::audit::Entry,
        version: u64,
    ) -> Result<crate::audit::Record, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let record = self.audit.write(&tx, entry, version, now_unix_ms())?;
        tx.commit()?;
        self.audit.committed(&record);
        Ok(record)
    }

    /// The record of an audited call that found nothing to change, within the caller's budget
    /// (like a refusal's: nothing changed, so repeating it must not fill the disk).
    fn record_unchanged(
        &mut self,
        audit: Option<&crate::audit::Entry>,
        version: u64,
    ) -> Result<(), StoreError> {
        let Some(entry) = audit else {
            return Ok(());
        };
        let unrecorded = match &entry.budget {
            Some(budget) => match budget.admit(entry.source_ip, &entry.actor, tokio::time::Instant::now()) {
                Some(unrecorded) => unrecorded,
                None => return Ok(()),
            },
            None => 0,
        };
        let entry = crate::audit::Entry {
            outcome: crate::audit::UNCHANGED.to_owned(),
            target: entry
                .unchanged_target
                .clone()
                .unwrap_or_else(|| entry.target.clone()),
            unrecorded,
            ..entry.clone()
        };
        self.append_audit(&entry, version)?;
        Ok(())
    }
}

/// Writes `audit` (if any) as the change's record at `version` and commits `tx`; the chain's
/// head moves only once the commit succeeded.
fn commit_audited(
    tx: rusqlite::Transaction<'_>,
    log: &mut audit::Log,
    audit: Option<&crate::audit::Entry>,
    version: u64,
) -> Result<(), StoreError> {
    let record = audit
        .map(|entry| log.write(&tx, entry, version, now_unix_ms()))
        .transpose()?;
    tx.commit()?;
    if let Some(record) = &record {
        log.committed(record);
    }
    Ok(())
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The store thread: open, report readiness, then serve jobs until closed.
fn run(
    path: &Path,
    key: &MasterKey,
    mut rx: mpsc::Receiver<Msg>,
    ready: oneshot::Sender<Result<Ready, StoreError>>,
) {
    let mut db = match open_db(path, key) {
        Ok(db) => db,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let handles = Ready {
        snapshots: db.publisher.subscribe(),
        identities: db.identities.subscribe(),
        audit_head: db.audit.subscribe(),
    };
    if ready.send(Ok(handles)).is_err() {
        return;
    }
    // A message taken off the queue while gathering usage batches, to run next.
    let mut next: Option<Msg> = None;
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => match rx.blocking_recv() {
                Some(msg) => msg,
                None => break,
            },
        };
        match msg {
            Msg::Run(job) => job(&mut db),
            Msg::Usage(first) => {
                // Group commit: the batches already waiting share one transaction (and one
                // fsync); order with other jobs is kept.
                let mut records = first.records.len();
                let mut group = vec![first];
                while records < usage::GROUP_MAX_RECORDS {
                    match rx.try_recv() {
                        Ok(Msg::Usage(pending)) => {
                            records += pending.records.len();
                            group.push(pending);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                usage::apply_group(&mut db.conn, group, db.ledger.as_ref());
            }
            Msg::Close => break,
        }
    }
    // Requests that arrive from now on fail with `Closed` instead of waiting.
    rx.close();
    if let Err((_, e)) = db.conn.close() {
        tracing::warn!(error = %e, "closing the database");
    }
    tracing::debug!("store closed");
}

/// Creates the database file readable and writable by its owner only (0600), like the token
/// and key files beside it, unless it exists already (then it is left as it is, with a warning
/// if others can read it). SQLite creates the `-wal` and `-shm` files with the database file's
/// mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.is_file()
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "the database is readable by other users (it holds provider keys, encrypted, and usage); chmod 600 it");
                }
            }
            Ok(())
        }
        Err(source) => Err(StoreError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

fn open_db(path: &Path, key: &MasterKey) -> Result<Db, StoreError> {
    create_private(path)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "the database is not in WAL mode");
    }
    // FULL: a usage batch (and every policy change) is on disk before it is acknowledged.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "cache_size", CACHE_SIZE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrations::migrate(&mut conn)?;
    let cipher = Cipher::new(key);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    meta::init(&tx, &cipher)?;
    tx.commit()?;
    let snapshot = snapshot::load(&conn, &cipher)?;
    let (publisher, _) = watch::channel(Arc::new(snapshot));
    let audit = audit::Log::load(&conn)?;
    let (identities, _) = watch::channel(admins::load_active(&conn)?);
    Ok(Db {
        conn,
        cipher,
        publisher,
        ledger: None,
        audit,
        identities,
    })
}

#[cfg(test)]
mod tests {
    use drover_proto::model::{Credential, ProviderKind, Secret, Strategy, Target, parse_base_url};

    use super::*;

    const PLAINTEXT_KEY: &str = "sk-plaintext-marker-5f3a9c";

    fn key() -> MasterKey {
        MasterKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn provider(name: &str, credential: Credential) -> Provider {
        Provider {
            name: name.into(),
            kind: ProviderKind::OpenAi,
            base_url: parse_base_url("https://api.openai.com/v1").unwrap(),
            credential,
            api_version: None,
            responses_api: None,
        }
    }

    fn azure(name: &str, api_version: Option<&str>) -> Provider {
        Provider {
            name: name.into(),
            kind: ProviderKind::Azure,
            base_url: parse_base_url("https://res.openai.azure.com").unwrap(),
            credential: Credential::Env("AZURE_OPENAI_API_KEY".into()),
            api_version: api_version.map(Into::into),
            responses_api: None,
        }
    }

    fn route(alias: &str, provider: &str) -> Route {
        Route {
            alias: alias.into(),
            strategy: Strategy::Fallback,
            cache_ttl_secs: 0,
            retry_after_send: false,
            targets: vec![Target {
                provider: provider.into(),
                model: "gpt-4o-mini".into(),
                weight: 1,
            }],
        }
    }

    fn raw_bytes(db: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(db).unwrap();
        if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
            bytes.extend(wal);
        }
        bytes
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_wal_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        store
            .add_provider(
                provider("openai", Credential::Env("OPENAI_API_KEY".into())),
                false,
            )
            .await
            .unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for file in ["drover.db", "drover.db-wal", "drover.db-shm"] {
            let path = dir.path().join(file);
            assert!(path.exists(), "{file} exists while the store is open");
            assert_eq!(mode(&path), 0o600, "{file}");
        }
        thread.close().await.unwrap();
        // An existing file is opened as it is.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (_, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(mode(&db), 0o640);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_new_store_starts_at_version_1_and_reopens_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let first = store.current();
        assert_eq!(first.version, 1);
        assert_eq!(first.store_id.len(), 32);
        assert!(first.providers.is_empty() && first.routes.is_empty());
        let v = store.set_module(Module::Auth, true).await.unwrap();
        assert_eq!(v, 2);
        thread.close().await.unwrap();
        assert!(matches!(
            store.set_module(Module::Audit, true).await,
            Err(StoreError::Closed)
        ));

        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let again = store.current();
        assert_eq!(
            (again.store_id.as_str(), again.version),
            (first.store_id.as_str(), 2)
        );
        assert!(again.modules.is_enabled(Module::Auth));
        thread.close().await.unwrap();

        let other = dir.path().join("other.db");
        let (store, thread) = Store::open(&other, key()).await.unwrap();
        assert_ne!(store.current().store_id, first.store_id);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn stored_keys_are_encrypted_at_rest_and_decrypt_into_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let key_provider = provider("openai", Credential::Key(Secret::new(PLAINTEXT_KEY)));
        assert_eq!(store.add_provider(key_provider.clone(), false).await.unwrap(), 2);
        assert_eq!(store.current().providers, vec![key_provider.clone()]);
        assert!(!contains(&raw_bytes(&db), PLAINTEXT_KEY.as_bytes()));

        // Without `replace` an existing name is refused; with it the provider is updated.
        let env_provider = provider("openai", Credential::Env("OPENAI_API_KEY".into()));
        let err = store.add_provider(env_provider.clone(), false).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
        assert_eq!(store.current().version, 2);
        assert_eq!(store.add_provider(env_provider.clone(), true).await.unwrap(), 3);
        assert_eq!(store.current().providers, vec![env_provider]);
        assert_eq!(store.add_provider(key_provider.clone(), true).await.unwrap(), 4);
        thread.close().await.unwrap();
        assert!(!contains(&raw_bytes(&db), PLAINTEXT_KEY.as_bytes()));

        let (store, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(store.current().providers, vec![key_provider]);
        assert_eq!(store.remove_provider("openai".into()).await.unwrap(), 5);
        assert!(store.current().providers.is_empty());
        let err = store.remove_provider("openai".into()).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn api_versions_are_stored_replaced_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let pinned = azure("az", Some("2025-04-01-preview"));
        store.add_provider(pinned.clone(), false).await.unwrap();
        store
            .add_provider(azure("az-default", None), false)
            .await
            .unwrap();
        assert_eq!(store.current().providers, vec![pinned, azure("az-default", None)]);
        let moved = azure("az", Some("2024-10-21"));
        store.add_provider(moved.clone(), true).await.unwrap();
        thread.close().await.unwrap();

        let (store, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(store.current().providers, vec![moved, azure("az-default", None)]);
        store.add_provider(azure("az", None), true).await.unwrap();
        assert_eq!(store.current().providers[0].api_version, None);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn responses_settings_are_stored_replaced_and_cleared() {
        use drover_proto::model::ResponsesApi;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let mut translate = azure("az", None);
        translate.responses_api = Some(ResponsesApi::Translate);
        store.add_provider(translate.clone(), false).await.unwrap();
        thread.close().await.unwrap();

        let (store, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(store.current().providers, vec![translate]);
        store.add_provider(azure("az", None), true).await.unwrap();
        assert_eq!(store.current().providers[0].responses_api, None);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_responses_setting_on_a_kind_without_the_endpoint_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        store
            .add_provider(provider("claude", Credential::None), false)
            .await
            .unwrap();
        thread.close().await.unwrap();
        Connection::open(&db)
            .unwrap()
            .execute(
                "UPDATE providers SET kind = 'anthropic', responses_api = 'relay'",
                [],
            )
            .unwrap();
        let err = Store::open(&db, key()).await.err().unwrap().to_string();
        assert!(err.contains("claude") && err.contains("responses_api"), "{err}");
    }

    #[tokio::test]
    async fn a_database_from_the_previous_schema_is_migrated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        {
            let mut conn = Connection::open(&db).unwrap();
            migrations::create_at(&mut conn, 1).unwrap();
            conn.execute_batch(
                "INSERT INTO providers (name, kind, base_url, api_key_env)
                 VALUES ('az', 'azure', 'https://res.openai.azure.com', 'AZURE_OPENAI_API_KEY');
                 INSERT INTO providers (name, kind, base_url) VALUES ('local', 'openai-compatible', 'http://127.0.0.1:8000/v1');
                 INSERT INTO routes (alias, strategy) VALUES ('fast', 'fallback');
                 INSERT INTO route_targets (alias, position, provider, model, weight)
                 VALUES ('fast', 0, 'local', 'm', 1);",
            )
            .unwrap();
        }
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let snapshot = store.current();
        let mut az = azure("az", None);
        // Azure providers from before the setting keep getting Responses calls translated.
        az.responses_api = Some(drover_proto::model::ResponsesApi::Translate);
        assert_eq!(snapshot.providers[0], az);
        assert_eq!(
            (
                snapshot.providers[1].name.as_str(),
                snapshot.providers[1].api_version.as_deref()
            ),
            ("local", None)
        );
        assert_eq!(snapshot.routes[0].alias, "fast");
        assert!(
            !snapshot.routes[0].retry_after_send,
            "an older route does not retry after sending"
        );
        let pinned = azure("az", Some("2024-10-21"));
        store.add_provider(pinned.clone(), true).await.unwrap();
        thread.close().await.unwrap();

        let (store, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(store.current().providers[0], pinned);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_wrong_master_key_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("drover.db");
        let (_, thread) = Store::open(&db, key()).await.unwrap();
        thread.close().await.unwrap();
        let err = Store::open(&db, MasterKey::generate()).await.err().unwrap();
        assert!(matches!(err, StoreError::Crypto(_)), "{err}");
        assert!(err.to_string().contains("master key"), "{err}");
    }

    #[tokio::test]
    async fn cross_checks_refuse_and_leave_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(&dir.path().join("d.db"), key()).await.unwrap();
        let err = store.set_route(route("fast", "nope")).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("unknown provider \"nope\""), "{err}");
        assert_eq!(store.current().version, 1);

        store
            .add_provider(provider("openai", Credential::None), false)
            .await
            .unwrap();
        store.set_route(route("fast", "openai")).await.unwrap();
        store.set_route(route("cheap", "openai")).await.unwrap();
        assert_eq!(store.current().version, 4);
        let err = store.remove_provider("openai".into()).await.unwrap_err();
        assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("\"cheap\", \"fast\""), "{err}");
        assert_eq!(store.current().version, 4);

        assert!(matches!(
            store.remove_route("nope".into()).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.remove_price("nope".into()).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.current().version, 4);
        store.remove_route("fast".into()).await.unwrap();
        store.remove_route("cheap".into()).await.unwrap();
        assert_eq!(store.remove_provider("openai".into()).await.unwrap(), 7);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn routes_keep_target_order_and_replacing_rewrites_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(&dir.path().join("d.db"), key()).await.unwrap();
        for name in ["b", "a"] {
            store
                .add_provider(provider(name, Credential::None), false)
                .await
                .unwrap();
        }
        let mut r = route("smart", "b");
        r.strategy = Strategy::Weighted;
        r.targets.push(Target {
            provider: "a".into(),
            model: "m2".into(),
            weight: 7,
        });
        store.set_route(r.clone()).await.unwrap();
        assert_eq!(store.current().routes, vec![r.clone()]);
        r.targets.reverse();
        r.strategy = Strategy::Fallback;
        store.set_route(r.clone()).await.unwrap();
        assert_eq!(store.current().routes, vec![r.clone()]);
        r.retry_after_send = true;
        store.set_route(r.clone()).await.unwrap();
        thread.close().await.unwrap();

        let (store, thread) = Store::open(&dir.path().join("d.db"), key()).await.unwrap();
        assert_eq!(store.current().routes, vec![r], "kept across a restart");
        thread.close().await.unwrap();
    }

    fn price_of(snapshot: &Snapshot, key: &str) -> Option<Price> {
        snapshot.prices.iter().find(|p| p.model == key).cloned()
    }

    #[tokio::test]
    async fn prices_and_modules_round_trip_and_no_ops_keep_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(&dir.path().join("d.db"), key()).await.unwrap();
        let price = Price {
            model: "my-model".into(),
            input_per_mtok: 0.15,
            output_per_mtok: 0.6,
            cached_input_per_mtok: Some(0.075),
        };
        assert_eq!(store.set_price(price.clone()).await.unwrap(), 2);
        assert_eq!(price_of(&store.current(), "my-model"), Some(price));
        assert_eq!(store.set_module(Module::Redact, false).await.unwrap(), 2);
        assert_eq!(store.set_module(Module::Redact, true).await.unwrap(), 3);
        assert_eq!(store.set_module(Module::Redact, true).await.unwrap(), 3);
        assert!(store.current().modules.is_enabled(Module::Redact));
        assert_eq!(store.remove_price("my-model".into()).await.unwrap(), 4);
        assert_eq!(price_of(&store.current(), "my-model"), None);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn custom_prices_override_the_defaults_and_removing_one_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let default = price_of(&store.current(), "gpt-4o").expect("a built-in price");
        assert_eq!((default.input_per_mtok, default.output_per_mtok), (2.5, 10.0));
        let defaults = store.current().prices.len();
        assert!(defaults >= 40, "{defaults}");

        let custom = Price {
            model: "gpt-4o".into(),
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: None,
        };
        let per_provider = Price {
            model: "azure-eu/gpt-4o".into(),
            input_per_mtok: 2.75,
            output_per_mtok: 11.0,
            cached_input_per_mtok: Some(1.375),
        };
        store.set_price(custom.clone()).await.unwrap();
        store.set_price(per_provider.clone()).await.unwrap();
        let snapshot = store.current();
        assert_eq!(price_of(&snapshot, "gpt-4o"), Some(custom.clone()));
        assert_eq!(price_of(&snapshot, "azure-eu/gpt-4o"), Some(per_provider.clone()));
        assert_eq!(snapshot.prices.len(), defaults + 1);
        let listed = store.list_prices().await.unwrap();
        let source = |key: &str| listed.iter().find(|(p, _)| p.model == key).map(|(_, s)| *s);
        assert_eq!(source("gpt-4o"), Some(PriceSource::Custom));
        assert_eq!(source("azure-eu/gpt-4o"), Some(PriceSource::Custom));
        assert_eq!(source("gpt-4o-mini"), Some(PriceSource::Default));
        thread.close().await.unwrap();

        // Custom prices are stored; defaults come from the build.
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(price_of(&store.current(), "gpt-4o"), Some(custom));
        let v = store.current().version;
        assert_eq!(store.remove_price("gpt-4o".into()).await.unwrap(), v + 1);
        assert_eq!(price_of(&store.current(), "gpt-4o"), Some(default));
        store.remove_price("azure-eu/gpt-4o".into()).await.unwrap();
        assert_eq!(price_of(&store.current(), "azure-eu/gpt-4o"), None);

        let err = store.remove_price("gpt-4o".into()).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFoundWhy(_)), "{err}");
        assert!(err.to_string().contains("can be overridden"), "{err}");
        let err = store.remove_price("ghost".into()).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        assert_eq!(store.current().version, v + 2);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_stored_price_key_the_rules_now_refuse_never_reaches_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let (_, thread) = Store::open(&db, key()).await.unwrap();
        thread.close().await.unwrap();
        let conn = Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO prices (model, input_per_mtok, output_per_mtok) VALUES ('Qwen/Qwen2.5-7B', 1, 1)",
            [],
        )
        .unwrap();
        drop(conn);
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        assert_eq!(price_of(&store.current(), "Qwen/Qwen2.5-7B"), None);
        pb_snapshot_is_valid(&store.current());
        // It can still be removed.
        store.remove_price("Qwen/Qwen2.5-7B".into()).await.unwrap();
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_stored_target_the_rules_now_refuse_still_builds_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let (store, thread) = Store::open(&db, key()).await.unwrap();
        store.add_provider(azure("az", None), false).await.unwrap();
        thread.close().await.unwrap();
        // As an older version could write it: an Azure deployment with a '/'.
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "INSERT INTO routes (alias, strategy) VALUES ('legacy', 'fallback');
             INSERT INTO route_targets (alias, position, provider, model, weight)
             VALUES ('legacy', 0, 'az', 'team/gpt-4o', 1);",
        )
        .unwrap();
        drop(conn);

        let (store, thread) = Store::open(&db, key()).await.unwrap();
        let legacy = store.current().routes[0].clone();
        assert_eq!(legacy.targets[0].model, "team/gpt-4o");
        pb_snapshot_is_valid(&store.current());
        // Changes go on; the same provider can be replaced (a key rotation), but not by a kind
        // change, nor can the route be written again as it is.
        let v = store.current().version;
        assert_eq!(
            store
                .add_provider(azure("az", Some("2024-10-21")), true)
                .await
                .unwrap(),
            v + 1
        );
        pb_snapshot_is_valid(&store.current());
        let gemini = Provider {
            kind: ProviderKind::Gemini,
            ..azure("az", None)
        };
        let err = store.add_provider(gemini, true).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        let err = store.set_route(legacy).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot be used with provider kind azure"),
            "{err}"
        );
        store.remove_route("legacy".into()).await.unwrap();
        assert!(store.current().routes.is_empty());
        thread.close().await.unwrap();
    }

    fn pb_snapshot_is_valid(snapshot: &Snapshot) {
        let wire = drover_proto::pb::Snapshot::from(snapshot);
        assert_eq!(&Snapshot::try_from(&wire).unwrap(), snapshot);
    }

    #[tokio::test]
    async fn every_change_is_published_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(&dir.path().join("d.db"), key()).await.unwrap();
        let mut rx = store.snapshots();
        let writers: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .add_provider(provider(&format!("p{i}"), Credential::None), false)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut last = 1;
        while last < 21 {
            rx.changed().await.unwrap();
            let v = rx.borrow_and_update().version;
            assert!(v > last, "published {v} after {last}");
            last = v;
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(store.current().providers.len(), 20);
        thread.close().await.unwrap();
        assert!(rx.changed().await.is_err(), "closing the store ends the channel");
    }
}
