//! Tenants and virtual keys as a data plane holds them: looked up by the SHA-256 of the
//! presented secret in O(1), with no lock and no allocation on a hit, and changed by deltas
//! without copying the whole set.
//!
//! Keys live in two maps (by hash, by id), each cut into [`SHARDS`] shards behind `Arc`s. A
//! policy version shares every shard with the version before it; a delta copies only the
//! shards it touches (`Arc::make_mut`), so one key change costs a few hundred entries copied,
//! whatever the number of keys. The hash map is sharded by the digest's first byte, the id map
//! by a hash of the id.

use std::collections::HashMap;
use std::sync::Arc;

use drover_proto::model::{self, Cap, Digest, InvalidPolicy, Limits, OnCpLoss, is_secret_shaped, quoted};
use drover_proto::pb;
use sha2::{Digest as _, Sha256};

use crate::limits::{LeaseTable, Scope, ScopeCells};

/// Shards per map: 100,000 keys make about 400 per shard.
const SHARDS: usize = 256;

/// A tenant as requests see it.
#[derive(Debug)]
pub struct TenantEntry {
    pub id: u64,
    pub name: Arc<str>,
    /// The response cache partition: the id, which a tenant deleted and made again under the
    /// same name does not share.
    pub partition: Arc<str>,
    pub suspended: bool,
    pub limits: Limits,
    pub caps: Box<[Cap]>,
    pub on_cp_loss: OnCpLoss,
    /// The lease cells of its limits and caps (shared with every policy version).
    pub cells: Option<Arc<ScopeCells>>,
}

impl TenantEntry {
    /// Whether its requests are refused when leases cannot be had.
    pub fn fails_closed(&self) -> bool {
        self.on_cp_loss == OnCpLoss::Closed
    }

    fn from_wire(t: &pb::Tenant, leases: &LeaseTable) -> Result<Self, InvalidPolicy> {
        let valid = model::Tenant::try_from(t)?;
        Ok(TenantEntry {
            id: valid.id,
            partition: Arc::from(valid.id.to_string()),
            name: Arc::from(valid.name),
            suspended: valid.suspended,
            cells: leases.scope(&Scope::Tenant(valid.id), &valid.limits, &valid.caps),
            limits: valid.limits,
            caps: valid.caps.into_boxed_slice(),
            on_cp_loss: valid.on_cp_loss,
        })
    }

    fn to_wire(&self) -> pb::Tenant {
        pb::Tenant::from(&model::Tenant {
            id: self.id,
            name: self.name.to_string(),
            suspended: self.suspended,
            limits: self.limits,
            caps: self.caps.to_vec(),
            on_cp_loss: self.on_cp_loss,
        })
    }
}

/// A virtual key as requests see it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: Arc<str>,
    pub tenant_id: u64,
    pub hash: Digest,
    /// Aliases and `provider/model` names it may use; empty: any.
    pub models: Box<[Box<str>]>,
    pub expires_unix_ms: Option<i64>,
    /// A rotated-away secret's hash, and when it stops working.
    pub previous: Option<(Digest, i64)>,
    pub limits: Limits,
    pub caps: Box<[Cap]>,
    /// The lease cells of its limits and caps (shared with every policy version).
    pub cells: Option<Arc<ScopeCells>>,
}

impl KeyEntry {
    /// Whether the key may use `model` (an alias or a `provider/model` name, as the caller wrote it).
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| &**m == model)
    }

    fn from_wire(k: &pb::VirtualKey, leases: &LeaseTable) -> Result<Self, InvalidPolicy> {
        let valid = model::VirtualKey::try_from(k)?;
        let id: Arc<str> = Arc::from(valid.id);
        Ok(KeyEntry {
            cells: leases.scope(&Scope::Key(id.clone()), &valid.limits, &valid.caps),
            limits: valid.limits,
            caps: valid.caps.into_boxed_slice(),
            id,
            tenant_id: valid.tenant_id,
            hash: valid.hash,
            models: valid.models.into_iter().map(String::into_boxed_str).collect(),
            expires_unix_ms: valid.expires_unix_ms,
            previous: valid.previous,
        })
    }

    fn to_wire(&self) -> pb::VirtualKey {
        pb::VirtualKey::from(&model::VirtualKey {
            id: self.id.to_string(),
            tenant_id: self.tenant_id,
            hash: self.hash,
            models: self.models.iter().map(|m| m.to_string()).collect(),
            expires_unix_ms: self.expires_unix_ms,
            previous: self.previous,
            limits: self.limits,
            caps: self.caps.to_vec(),
        })
    }

    fn hashes(&self) -> impl Iterator<Item = &Digest> {
        std::iter::once(&self.hash).chain(self.previous.as_ref().map(|(h, _)| h))
    }
}

/// A caller whose key was found and may be used now.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: Arc<KeyEntry>,
    pub tenant: Arc<TenantEntry>,
}

/// What a presented secret turned out to be.
#[derive(Debug, Clone)]
pub enum Found {
    Key(Identity),
    /// No key has this secret (or it was revoked: revoked keys are not held).
    Unknown,
    Expired,
    Suspended,
}

/// A map cut into shards that versions share.
#[derive(Debug, Clone)]
struct Sharded<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    fn shard(&self, at: usize) -> &HashMap<K, V> {
        &self.shards[at % SHARDS]
    }

    fn shard_mut(&mut self, at: usize) -> &mut HashMap<K, V> {
        Arc::make_mut(&mut self.shards[at % SHARDS])
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

fn id_shard(id: &str) -> usize {
    // FNV-1a: ids are random already; this only spreads them.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as usize
}

fn hash_shard(hash: &Digest) -> usize {
    usize::from(hash[0])
}

/// Every tenant and usable key of one policy version.
#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    tenants: Arc<HashMap<u64, Arc<TenantEntry>>>,
    by_hash: Sharded<Digest, Arc<KeyEntry>>,
    by_id: Sharded<Arc<str>, Arc<KeyEntry>>,
    keys: usize,
}

impl Tenancy {
    /// The tenancy of a complete snapshot.
    pub fn complete(
        tenants: &[pb::Tenant],
        keys: &[pb::VirtualKey],
        leases: &LeaseTable,
    ) -> Result<Self, InvalidPolicy> {
        Tenancy::default().apply(&[], tenants, &[], keys, leases)
    }

    /// This tenancy with a delta applied: removals first, then additions and changes. Keys
    /// must name a tenant of the result, and no two keys may share a hash.
    pub fn apply(
        &self,
        removed_tenants: &[u64],
        tenants: &[pb::Tenant],
        removed_keys: &[String],
        keys: &[pb::VirtualKey],
        leases: &LeaseTable,
    ) -> Result<Self, InvalidPolicy> {
        let mut next = self.clone();
        if !removed_tenants.is_empty() || !tenants.is_empty() {
            let map = Arc::make_mut(&mut next.tenants);
            for id in removed_tenants {
                map.remove(id);
            }
            for t in tenants {
                let entry = TenantEntry::from_wire(t, leases)?;
                map.insert(entry.id, Arc::new(entry));
            }
        }
        for id in removed_keys {
            next.remove_key(id);
        }
        for k in keys {
            let entry = Arc::new(KeyEntry::from_wire(k, leases)?);
            if !next.tenants.contains_key(&entry.tenant_id) {
                return Err(InvalidPolicy::new(
                    format!("key {}", quoted(&entry.id)),
                    format!("names tenant {}, which is not in the snapshot", entry.tenant_id),
                ));
            }
            next.remove_key(&entry.id);
            for hash in entry.hashes() {
                let shard = next.by_hash.shard_mut(hash_shard(hash));
                if let Some(other) = shard.insert(*hash, entry.clone()) {
                    return Err(InvalidPolicy::new(
                        format!("key {}", quoted(&entry.id)),
                        format!("has the hash of key {}", quoted(&other.id)),
                    ));
                }
            }
            next.by_id
                .shard_mut(id_shard(&entry.id))
                .insert(entry.id.clone(), entry);
            next.keys += 1;
        }
        Ok(next)
    }

    fn remove_key(&mut self, id: &str) {
        let at = id_shard(id);
        if !self.by_id.shard(at).contains_key(id) {
            return;
        }
        let Some(old) = self.by_id.shard_mut(at).remove(id) else {
            return;
        };
        for hash in old.hashes() {
            self.by_hash.shard_mut(hash_shard(hash)).remove(hash);
        }
        self.keys -= 1;
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// The key whose secret is `secret`, checked against `now_unix_ms` and its tenant's state.
    /// Anything not shaped like a secret is `Unknown` without being hashed.
    pub fn find(&self, secret: &str, now_unix_ms: i64) -> Found {
        if !is_secret_shaped(secret) {
            return Found::Unknown;
        }
        let digest: Digest = Sha256::digest(secret.as_bytes()).into();
        let Some(key) = self.by_hash.shard(hash_shard(&digest)).get(&digest) else {
            return Found::Unknown;
        };
        let expired = if key.hash == digest {
            key.expires_unix_ms.is_some_and(|at| at <= now_unix_ms)
        } else {
            // The previous secret of a rotation: only until its grace period ends.
            key.previous.is_none_or(|(_, until)| until <= now_unix_ms)
                || key.expires_unix_ms.is_some_and(|at| at <= now_unix_ms)
        };
        if expired {
            return Found::Expired;
        }
        match self.tenants.get(&key.tenant_id) {
            None => Found::Unknown,
            Some(t) if t.suspended => Found::Suspended,
            Some(t) => Found::Key(Identity {
                key: key.clone(),
                tenant: t.clone(),
            }),
        }
    }

    /// Every tenant and key, for a complete snapshot (the last-good file).
    pub fn to_wire(&self) -> (Vec<pb::Tenant>, Vec<pb::VirtualKey>) {
        let mut tenants: Vec<pb::Tenant> = self.tenants.values().map(|t| t.to_wire()).collect();
        tenants.sort_by_key(|t| t.id);
        let mut keys: Vec<pb::VirtualKey> = self.by_id.values().map(|k| k.to_wire()).collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        (tenants, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u32) -> String {
        format!("drv_{:0>43}", n)
    }

    fn digest(s: &str) -> Vec<u8> {
        Sha256::digest(s.as_bytes()).to_vec()
    }

    fn key(n: u32, tenant_id: u64) -> pb::VirtualKey {
        pb::VirtualKey {
            id: format!("key_{n:0>16}"),
            tenant_id,
            hash: digest(&secret(n)),
            ..Default::default()
        }
    }

    fn tenant(id: u64, suspended: bool) -> pb::Tenant {
        pb::Tenant {
            id,
            name: format!("t{id}"),
            suspended,
            ..Default::default()
        }
    }

    fn found_id(f: &Found) -> Option<&str> {
        match f {
            Found::Key(identity) => Some(&identity.key.id),
            _ => None,
        }
    }

    #[test]
    fn keys_are_found_by_secret_and_checked() {
        let mut expiring = key(2, 1);
        expiring.expires_unix_ms = 1_000;
        let limited = pb::VirtualKey {
            models: vec!["gpt".into()],
            ..key(3, 2)
        };
        let t = Tenancy::complete(
            &[tenant(1, false), tenant(2, true)],
            &[key(1, 1), expiring, limited],
            &LeaseTable::default(),
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(found_id(&t.find(&secret(1), 5_000)), Some("key_0000000000000001"));
        assert!(matches!(t.find(&secret(2), 5_000), Found::Expired));
        assert!(found_id(&t.find(&secret(2), 999)).is_some());
        assert!(matches!(t.find(&secret(3), 0), Found::Suspended));
        assert!(matches!(t.find(&secret(4), 0), Found::Unknown));
        assert!(matches!(t.find("sk-not-ours", 0), Found::Unknown));
        assert!(matches!(t.find("", 0), Found::Unknown));
        let Found::Key(id) = t.find(&secret(1), 0) else {
            panic!()
        };
        assert!(id.key.allows("anything"));
        assert_eq!(&*id.tenant.name, "t1");
        assert_eq!(&*id.tenant.partition, "1");
    }

    #[test]
    fn a_delta_changes_only_what_it_names_and_shares_the_rest() {
        let keys: Vec<_> = (0..2_000).map(|n| key(n, 1)).collect();
        let before = Tenancy::complete(&[tenant(1, false)], &keys, &LeaseTable::default()).unwrap();
        let mut rotated = key(7, 1);
        rotated.hash = digest(&secret(10_007));
        rotated.previous_hash = digest(&secret(7));
        rotated.previous_expires_unix_ms = 2_000;
        let after = before
            .apply(
                &[],
                &[],
                &["key_0000000000000005".into()],
                &[rotated, key(5_000, 1)],
                &LeaseTable::default(),
            )
            .unwrap();
        assert_eq!(after.len(), 2_000);
        assert!(matches!(after.find(&secret(5), 0), Found::Unknown), "removed");
        assert!(found_id(&after.find(&secret(5_000), 0)).is_some(), "added");
        assert!(found_id(&after.find(&secret(10_007), 0)).is_some(), "new secret");
        assert!(
            found_id(&after.find(&secret(7), 1_999)).is_some(),
            "old secret in grace"
        );
        assert!(
            matches!(after.find(&secret(7), 2_000), Found::Expired),
            "grace over"
        );
        // The version before is untouched.
        assert!(found_id(&before.find(&secret(5), 0)).is_some());
        assert!(matches!(before.find(&secret(10_007), 0), Found::Unknown));
        // Most shards are shared, not copied.
        let shared = before
            .by_hash
            .shards
            .iter()
            .zip(&after.by_hash.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 8, "{shared} of {SHARDS} shared");
        // A rotation without grace drops the old hash.
        let plain = pb::VirtualKey {
            hash: digest(&secret(20_007)),
            ..key(7, 1)
        };
        let again = after
            .apply(&[], &[], &[], &[plain], &LeaseTable::default())
            .unwrap();
        assert!(matches!(again.find(&secret(10_007), 0), Found::Unknown));
        assert!(matches!(again.find(&secret(7), 0), Found::Unknown));
        // Suspending the tenant needs no key.
        let suspended = again
            .apply(&[], &[tenant(1, true)], &[], &[], &LeaseTable::default())
            .unwrap();
        assert!(matches!(suspended.find(&secret(1), 0), Found::Suspended));
        let (tenants, wire_keys) = suspended.to_wire();
        assert!(tenants[0].suspended);
        assert_eq!(wire_keys.len(), 2_000);
        assert_eq!(
            Tenancy::complete(&tenants, &wire_keys, &LeaseTable::default())
                .unwrap()
                .len(),
            2_000
        );
    }

    #[test]
    fn bad_deltas_are_refused() {
        let t = Tenancy::complete(&[tenant(1, false)], &[key(1, 1)], &LeaseTable::default()).unwrap();
        let e = t
            .apply(&[], &[], &[], &[key(2, 9)], &LeaseTable::default())
            .unwrap_err();
        assert!(e.reason.contains("not in the snapshot"), "{e}");
        let twin = pb::VirtualKey {
            id: "key_twin000000000000".into(),
            ..key(1, 1)
        };
        assert!(
            t.apply(&[], &[], &[], &[twin], &LeaseTable::default())
                .unwrap_err()
                .reason
                .contains("hash of key")
        );
        let short = pb::VirtualKey {
            hash: vec![1; 3],
            ..key(2, 1)
        };
        assert!(t.apply(&[], &[], &[], &[short], &LeaseTable::default()).is_err());
        // Removing what is not there is fine.
        assert_eq!(
            t.apply(&[7], &[], &["key_none".into()], &[], &LeaseTable::default())
                .unwrap()
                .len(),
            1
        );
    }
}
