//! Tenants and keys as the admin API changes them, and the policy updates the policy stream
//! sends: complete, or what changed since a version a data plane serves.
//!
//! A tenancy change bumps the policy version like any other but leaves the config (providers,
//! routes, prices, modules) alone, so the published snapshot keeps its config and only gains
//! the new version; data planes then ask for what changed ([`Store::policy_update`]).

use drover_proto::model::now_unix_ms;
use drover_proto::model::{self, Digest, Labels, OnCpLoss, quoted};
use drover_proto::pb;
use rusqlite::Connection;

use super::crypto::Cipher;
use super::idempotency::{self, Idempotency};
use super::keys::{self, KeyRow, KeyState, NewKey};
use super::limits;
use super::page::{Page, PageToken};
use super::tenants::{self, TenantRow, TenantState};
use super::{Db, Store, meta};
use crate::error::StoreError;

/// Whether a tenancy job changed anything; an unchanged one rolls back and keeps the version.
pub(super) enum Outcome<T> {
    Changed(T),
    Unchanged(T),
}

impl<T> Outcome<T> {
    pub(super) fn changed_if(changed: bool, value: T) -> Self {
        if changed {
            Outcome::Changed(value)
        } else {
            Outcome::Unchanged(value)
        }
    }
}

/// A new secret, made by the caller (the admin API) and stored only as its hash.
#[derive(Debug, Clone)]
pub struct NewSecret {
    pub secret: String,
    pub prefix: String,
    pub hash: Digest,
}

/// A tenant update as the admin API asked for it.
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub state: Option<TenantState>,
    pub set_labels: Labels,
    pub remove_labels: Vec<String>,
    /// `None`: as it is.
    pub on_cp_loss: Option<OnCpLoss>,
}

impl Db {
    /// Runs `f` in a write transaction at the next policy version; commits and publishes when it
    /// reports a change. Returns its value and the version after the call.
    /// With `identities`, also publishes the admin identities in force again, as the change
    /// leaves them (a deleted tenant takes the identities scoped to it along).
    fn change_tenancy<T>(
        &mut self,
        audit: Option<&crate::audit::Entry>,
        identities: bool,
        f: impl FnOnce(&Connection, &Cipher, u64) -> Result<Outcome<T>, StoreError>,
    ) -> Result<(T, u64), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version = meta::bump(&tx, false)?;
        match f(&tx, &self.cipher, version)? {
            Outcome::Unchanged(value) => {
                drop(tx);
                self.record_unchanged(audit, version - 1)?;
                Ok((value, version - 1))
            }
            Outcome::Changed(value) => {
                let identities = identities.then(|| super::admins::load_active(&tx)).transpose()?;
                super::commit_audited(tx, &mut self.audit, audit, version)?;
                if let Some(identities) = identities {
                    self.identities.send_replace(identities);
                }
                let current = self.publisher.borrow().clone();
                let next = model::Snapshot {
                    version,
                    ..(*current).clone()
                };
                self.publisher.send_replace(std::sync::Arc::new(next));
                Ok((value, version))
            }
        }
    }
}

/// Runs `make` unless `idempotency` names an earlier call, whose answer is returned instead;
/// records the new answer for retries.
pub(super) fn once<M: prost::Message + Default>(
    conn: &Connection,
    cipher: &Cipher,
    idempotency: Option<&Idempotency>,
    now: i64,
    make: impl FnOnce() -> Result<M, StoreError>,
) -> Result<Outcome<M>, StoreError> {
    if let Some(key) = idempotency
        && let Some(answer) = idempotency::replay(conn, cipher, key, now)?
    {
        return Ok(Outcome::Unchanged(answer));
    }
    let answer = make()?;
    if let Some(key) = idempotency {
        idempotency::record(conn, cipher, key, &answer, now)?;
    }
    Ok(Outcome::Changed(answer))
}

impl Store {
    /// Runs `f` on the store thread in a tenancy change (see `Db::change_tenancy`).
    pub(super) async fn tenancy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Cipher, u64) -> Result<Outcome<T>, StoreError> + Send + 'static,
    ) -> Result<(T, u64), StoreError> {
        let audit = self.audit.clone();
        self.call(move |db| db.change_tenancy(audit.as_deref(), false, f))
            .await
    }

    /// Creates a tenant. With `idempotency`, a repeated call gets the first call's answer.
    pub async fn create_tenant(
        &self,
        name: String,
        labels: Labels,
        on_cp_loss: OnCpLoss,
        idempotency: Option<Idempotency>,
    ) -> Result<pb::TenantResponse, StoreError> {
        let (answer, _) = self
            .tenancy(move |conn, cipher, rev| {
                let now = now_unix_ms();
                once(conn, cipher, idempotency.as_ref(), now, || {
                    let row = tenants::insert(conn, &name, &labels, on_cp_loss, now, rev)?;
                    Ok(pb::TenantResponse {
                        tenant: Some(tenants::info(conn, &row, now)?),
                        version: rev,
                    })
                })
            })
            .await?;
        Ok(answer)
    }

    pub async fn get_tenant(&self, name: String) -> Result<pb::TenantResponse, StoreError> {
        self.call(move |db| {
            let row = tenants::get(&db.conn, &name)?;
            Ok(pb::TenantResponse {
                tenant: Some(tenants::info(&db.conn, &row, now_unix_ms())?),
                version: meta::version(&db.conn)?,
            })
        })
        .await
    }

    pub async fn list_tenants(
        &self,
        state: Option<TenantState>,
        page: Page,
    ) -> Result<(Vec<pb::TenantInfo>, Option<PageToken>), StoreError> {
        self.call(move |db| {
            let (rows, next) = tenants::list(&db.conn, state, &page)?;
            let now = now_unix_ms();
            let infos = rows
                .iter()
                .map(|t| tenants::info(&db.conn, t, now))
                .collect::<Result<_, _>>()?;
            Ok((infos, next))
        })
        .await
    }

    pub async fn update_tenant(
        &self,
        name: String,
        update: TenantUpdate,
    ) -> Result<pb::TenantResponse, StoreError> {
        let (tenant, version) = self
            .tenancy(move |conn, _, rev| {
                let row = tenants::get(conn, &name)?;
                let mut labels = row.labels.clone();
                labels.extend(update.set_labels);
                for k in &update.remove_labels {
                    labels.remove(k);
                }
                if labels.len() > model::MAX_LABELS {
                    return Err(model::InvalidPolicy::new(
                        "set_labels",
                        format!(
                            "the tenant would have {} labels; at most {}",
                            labels.len(),
                            model::MAX_LABELS
                        ),
                    )
                    .into());
                }
                let updated = TenantRow {
                    state: update.state.unwrap_or(row.state),
                    labels,
                    on_cp_loss: update.on_cp_loss.unwrap_or(row.on_cp_loss),
                    ..row.clone()
                };
                let changed = tenants::update(conn, &row, &updated, rev)?;
                let info = tenants::info(conn, &updated, now_unix_ms())?;
                Ok(Outcome::changed_if(changed, info))
            })
            .await?;
        Ok(pb::TenantResponse {
            tenant: Some(tenant),
            version,
        })
    }

    /// Deletes a tenant; refused while it has active keys unless `force`, which revokes them.
    /// Its limits and caps, and its keys', are deleted with it.
    pub async fn delete_tenant(
        &self,
        name: String,
        force: bool,
    ) -> Result<pb::DeleteTenantResponse, StoreError> {
        let audit = self.audit.clone();
        let (revoked, version) = self
            .call(move |db| {
                db.change_tenancy(audit.as_deref(), true, move |conn, _, rev| {
                    let row = tenants::get(conn, &name)?;
                    let now = now_unix_ms();
                    let active = keys::count_active(conn, row.id, now)?;
                    if active > 0 && !force {
                        return Err(StoreError::FailedPrecondition(format!(
                            "tenant {} has {active} active key(s); revoke them first, or delete with force",
                            quoted(&name)
                        )));
                    }
                    let revoked = keys::revoke_all_of(conn, row.id, now, rev)?;
                    limits::drop_tenant(conn, row.id)?;
                    tenants::delete(conn, row.id, rev)?;
                    Ok(Outcome::Changed(revoked))
                })
            })
            .await?;
        Ok(pb::DeleteTenantResponse {
            version,
            revoked_keys: revoked,
        })
    }

    /// Creates a key of tenant `tenant` with `secret`. With `idempotency`, a repeated call gets
    /// the first call's answer, secret included.
    pub async fn create_key(
        &self,
        tenant: String,
        key: NewKey,
        secret: NewSecret,
        idempotency: Option<Idempotency>,
    ) -> Result<pb::KeyWithSecretResponse, StoreError> {
        let (answer, _) = self
            .tenancy(move |conn, cipher, rev| {
                let now = now_unix_ms();
                once(conn, cipher, idempotency.as_ref(), now, || {
                    let owner = tenants::get(conn, &tenant)?;
                    let key = NewKey {
                        tenant_id: owner.id,
                        prefix: secret.prefix.clone(),
                        hash: secret.hash,
                        created_unix_ms: now,
                        ..key
                    };
                    keys::insert(conn, &key, rev)?;
                    Ok(pb::KeyWithSecretResponse {
                        key: Some(keys::get(conn, &key.id)?.info(now)),
                        secret: secret.secret,
                        version: rev,
                    })
                })
            })
            .await?;
        Ok(answer)
    }

    /// The id of the tenant key `id` belongs to (revoked keys included); `None` for no key.
    pub async fn key_tenant(&self, id: String) -> Result<Option<i64>, StoreError> {
        self.call(move |db| {
            use rusqlite::OptionalExtension as _;
            Ok(db
                .conn
                .prepare_cached("SELECT tenant_id FROM keys WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    pub async fn get_key(&self, id: String) -> Result<pb::KeyResponse, StoreError> {
        self.call(move |db| {
            Ok(pb::KeyResponse {
                key: Some(keys::get(&db.conn, &id)?.info(now_unix_ms())),
                version: meta::version(&db.conn)?,
            })
        })
        .await
    }

    /// A page of keys, optionally of the tenant called `tenant` (NOT_FOUND if there is none).
    pub async fn list_keys(
        &self,
        tenant: Option<String>,
        state: Option<KeyState>,
        page: Page,
    ) -> Result<(Vec<pb::KeyInfo>, Option<PageToken>), StoreError> {
        self.call(move |db| {
            let tenant_id = match tenant {
                Some(name) => Some(tenants::get(&db.conn, &name)?.id),
                None => None,
            };
            let now = now_unix_ms();
            let (rows, next) = keys::list(&db.conn, tenant_id, state, now, &page)?;
            Ok((rows.iter().map(|k| k.info(now)).collect(), next))
        })
        .await
    }

    /// Revokes a key and deletes its limits and caps.
    pub async fn revoke_key(&self, id: String) -> Result<pb::KeyResponse, StoreError> {
        let (key, version) = self
            .tenancy(move |conn, _, rev| {
                keys::get(conn, &id)?;
                let now = now_unix_ms();
                let changed = keys::revoke(conn, &id, now, rev)?;
                limits::drop_key(conn, &id)?;
                let info = keys::get(conn, &id)?.info(now);
                Ok(Outcome::changed_if(changed, info))
            })
            .await?;
        Ok(pb::KeyResponse {
            key: Some(key),
            version,
        })
    }

    /// Gives a key `secret`; the previous one keeps working for `grace_ms`.
    pub async fn rotate_key(
        &self,
        id: String,
        secret: NewSecret,
        grace_ms: i64,
        idempotency: Option<Idempotency>,
    ) -> Result<pb::KeyWithSecretResponse, StoreError> {
        let (answer, _) = self
            .tenancy(move |conn, cipher, rev| {
                let now = now_unix_ms();
                once(conn, cipher, idempotency.as_ref(), now, || {
                    let row: KeyRow = keys::get(conn, &id)?;
                    if row.state(now) == KeyState::Revoked {
                        return Err(StoreError::FailedPrecondition(format!(
                            "key {} is revoked; create a new one",
                            quoted(&id)
                        )));
                    }
                    keys::rotate(conn, &id, &secret.hash, &secret.prefix, now + grace_ms, now, rev)?;
                    Ok(pb::KeyWithSecretResponse {
                        key: Some(keys::get(conn, &id)?.info(now)),
                        secret: secret.secret,
                        version: rev,
                    })
                })
            })
            .await?;
        Ok(answer)
    }

    /// What a data plane that serves `base` (store id and version) needs to serve the current
    /// version: a delta when `base` is a version of this store no newer than the current one, a
    /// complete snapshot otherwise; `None` when it serves the current version already.
    pub async fn policy_update(
        &self,
        base: Option<(String, u64)>,
    ) -> Result<Option<pb::Snapshot>, StoreError> {
        self.call(move |db| {
            let current = db.publisher.borrow().clone();
            let since = base
                .filter(|(store_id, v)| *store_id == current.store_id && *v >= 1 && *v <= current.version)
                .map(|(_, v)| v);
            if since == Some(current.version) {
                return Ok(None);
            }
            let config_changed = match since {
                None => true,
                Some(v) => meta::config_version(&db.conn)? > v,
            };
            let mut update = if config_changed {
                pb::Snapshot::from(&*current)
            } else {
                pb::Snapshot {
                    store_id: current.store_id.clone(),
                    version: current.version,
                    config_unchanged: true,
                    ..Default::default()
                }
            };
            update.base_version = since.unwrap_or(0);
            let now = now_unix_ms();
            (update.tenants, update.removed_tenants) = tenants::changed_since(&db.conn, since)?;
            (update.keys, update.removed_keys) = keys::changed_since(&db.conn, since, now)?;
            Ok(Some(update))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::model::Module;

    use super::*;
    use crate::store::crypto::MasterKey;

    async fn open(dir: &tempfile::TempDir) -> (Store, super::super::StoreThread) {
        Store::open(&dir.path().join("drover.db"), MasterKey::generate())
            .await
            .unwrap()
    }

    fn key(id: &str) -> NewKey {
        NewKey {
            id: id.into(),
            tenant_id: 0,
            name: String::new(),
            prefix: String::new(),
            hash: [0; 32],
            models: vec!["gpt".into()],
            created_unix_ms: 0,
            expires_unix_ms: 0,
        }
    }

    fn secret(n: u8) -> NewSecret {
        NewSecret {
            secret: format!("drv_{n}_the_rest_of_the_secret"),
            prefix: format!("drv_{n}"),
            hash: [n; 32],
        }
    }

    fn ids(keys: &[pb::VirtualKey]) -> Vec<&str> {
        let mut ids: Vec<_> = keys.iter().map(|k| k.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn deltas_carry_only_what_changed_since_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        let store_id = store.current().store_id.clone();
        let t = store
            .create_tenant("acme".into(), Labels::new(), OnCpLoss::Open, None)
            .await
            .unwrap();
        let v_tenant = t.version;
        store
            .create_key("acme".into(), key("key_aaaaaaaaaaaaaaaa"), secret(1), None)
            .await
            .unwrap();
        let b = store
            .create_key("acme".into(), key("key_bbbbbbbbbbbbbbbb"), secret(2), None)
            .await
            .unwrap();

        // A fresh data plane gets everything, config included.
        let full = store.policy_update(None).await.unwrap().unwrap();
        assert_eq!((full.base_version, full.config_unchanged), (0, false));
        assert_eq!(ids(&full.keys), ["key_aaaaaaaaaaaaaaaa", "key_bbbbbbbbbbbbbbbb"]);
        assert_eq!(full.tenants.len(), 1);
        assert!(!full.tenants[0].suspended);
        // One that serves the current version gets nothing.
        let current = (store_id.clone(), b.version);
        assert!(
            store
                .policy_update(Some(current.clone()))
                .await
                .unwrap()
                .is_none()
        );
        // One that serves the version after the tenant was made gets the two keys only.
        let delta = store
            .policy_update(Some((store_id.clone(), v_tenant)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((delta.base_version, delta.config_unchanged), (v_tenant, true));
        assert!(delta.providers.is_empty() && delta.tenants.is_empty());
        assert_eq!(delta.keys.len(), 2);

        // Revoking one key: a delta of one removal, small on the wire.
        let revoked = store.revoke_key("key_aaaaaaaaaaaaaaaa".into()).await.unwrap();
        let delta = store.policy_update(Some(current.clone())).await.unwrap().unwrap();
        assert_eq!(delta.version, revoked.version);
        assert_eq!(delta.removed_keys, ["key_aaaaaaaaaaaaaaaa"]);
        assert!(delta.keys.is_empty());
        assert!(prost::Message::encoded_len(&delta) < 1024);
        // Revoking it again changes nothing, not even the version.
        let again = store.revoke_key("key_aaaaaaaaaaaaaaaa".into()).await.unwrap();
        assert_eq!(again.version, revoked.version);

        // Suspending the tenant sends the tenant, not its keys.
        let suspended = store
            .update_tenant(
                "acme".into(),
                TenantUpdate {
                    state: Some(TenantState::Suspended),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let delta = store
            .policy_update(Some((store_id.clone(), revoked.version)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delta.version, suspended.version);
        assert!(delta.keys.is_empty() && delta.tenants[0].suspended);

        // A config change since the base brings the config along.
        store.set_module(Module::Auth, true).await.unwrap();
        let delta = store
            .policy_update(Some((store_id.clone(), suspended.version)))
            .await
            .unwrap()
            .unwrap();
        assert!(!delta.config_unchanged);
        assert!(delta.modules.iter().any(|m| m.name == "auth" && m.enabled));

        // Another store's snapshot, or a version from the future, gets a complete snapshot.
        for base in [("other".to_owned(), 2), (store_id.clone(), 10_000)] {
            let full = store.policy_update(Some(base)).await.unwrap().unwrap();
            assert_eq!(full.base_version, 0);
            assert_eq!(ids(&full.keys), ["key_bbbbbbbbbbbbbbbb"]);
        }

        // Deleting the tenant: refused while it has an active key, then forced.
        let err = store.delete_tenant("acme".into(), false).await.unwrap_err();
        assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");
        let before = store.current().version;
        let deleted = store.delete_tenant("acme".into(), true).await.unwrap();
        assert_eq!(deleted.revoked_keys, 1);
        let delta = store
            .policy_update(Some((store_id.clone(), before)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delta.removed_keys, ["key_bbbbbbbbbbbbbbbb"]);
        assert_eq!(delta.removed_tenants.len(), 1);
        // Its name is free again, under a new id.
        store
            .create_tenant("acme".into(), Labels::new(), OnCpLoss::Open, None)
            .await
            .unwrap();
        let full = store.policy_update(None).await.unwrap().unwrap();
        assert_eq!(full.tenants.len(), 1);
        assert_ne!(full.tenants[0].id, delta.removed_tenants[0]);
        thread.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_repeated_request_id_replays_the_first_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        store
            .create_tenant("acme".into(), Labels::new(), OnCpLoss::Open, None)
            .await
            .unwrap();
        let idem = |args: &[&[u8]]| Idempotency::new("CreateKey", "retry-1", args);
        let first = store
            .create_key(
                "acme".into(),
                key("key_aaaaaaaaaaaaaaaa"),
                secret(1),
                idem(&[b"a"]),
            )
            .await
            .unwrap();
        let again = store
            .create_key(
                "acme".into(),
                key("key_cccccccccccccccc"),
                secret(3),
                idem(&[b"a"]),
            )
            .await
            .unwrap();
        assert_eq!(again, first, "same key, same secret, same version");
        let (keys, _) = store
            .list_keys(None, None, Page::from_wire(0, "", "k".into()).unwrap())
            .await
            .unwrap();
        assert_eq!(keys.len(), 1);
        let err = store
            .create_key(
                "acme".into(),
                key("key_dddddddddddddddd"),
                secret(4),
                idem(&[b"b"]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
        // The stored answer holds the secret encrypted only.
        thread.close().await.unwrap();
        let raw = std::fs::read(dir.path().join("drover.db")).unwrap();
        let wal = std::fs::read(dir.path().join("drover.db-wal")).unwrap_or_default();
        let needle = first.secret.as_bytes();
        assert!(
            !raw.windows(needle.len())
                .chain(wal.windows(needle.len()))
                .any(|w| w == needle)
        );
    }

    #[tokio::test]
    async fn rotation_keeps_the_previous_secret_for_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = open(&dir).await;
        store
            .create_tenant("acme".into(), Labels::new(), OnCpLoss::Open, None)
            .await
            .unwrap();
        store
            .create_key("acme".into(), key("key_aaaaaaaaaaaaaaaa"), secret(1), None)
            .await
            .unwrap();
        let rotated = store
            .rotate_key("key_aaaaaaaaaaaaaaaa".into(), secret(2), 60_000, None)
            .await
            .unwrap();
        assert!(rotated.key.unwrap().previous_expires_unix_ms > now_unix_ms());
        let full = store.policy_update(None).await.unwrap().unwrap();
        assert_eq!(full.keys[0].hash, vec![2; 32]);
        assert_eq!(full.keys[0].previous_hash, vec![1; 32]);
        // Without grace the previous secret stops at once.
        store
            .rotate_key("key_aaaaaaaaaaaaaaaa".into(), secret(3), 0, None)
            .await
            .unwrap();
        let full = store.policy_update(None).await.unwrap().unwrap();
        assert!(full.keys[0].previous_hash.is_empty());
        store.revoke_key("key_aaaaaaaaaaaaaaaa".into()).await.unwrap();
        let err = store
            .rotate_key("key_aaaaaaaaaaaaaaaa".into(), secret(4), 0, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");
        thread.close().await.unwrap();
    }
}
