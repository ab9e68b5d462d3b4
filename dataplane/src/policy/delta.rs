//! Deltas on the policy stream: the complete snapshot a delta leads to, from the complete
//! snapshot it builds on (see `Snapshot.base_version` in policy.proto).

use std::collections::HashMap;

use drover_proto::model::InvalidPolicy;
use drover_proto::pb;

/// The complete snapshot `update` leads to from `base`, the complete snapshot this data plane
/// serves (`None`: it serves none). A complete `update` is returned as it is. A delta that does
/// not build on `base` is refused: the data plane NACKs it and keeps what it serves.
pub fn apply(base: Option<&pb::Snapshot>, update: pb::Snapshot) -> Result<pb::Snapshot, InvalidPolicy> {
    if update.base_version == 0 {
        if update.config_unchanged {
            return Err(InvalidPolicy::new(
                "config_unchanged",
                "is set on a complete snapshot",
            ));
        }
        return Ok(update);
    }
    let serving = base.map(|b| (b.store_id.as_str(), b.version));
    let Some(base) = base.filter(|b| b.store_id == update.store_id && b.version == update.base_version)
    else {
        return Err(InvalidPolicy::new(
            "base_version",
            format!(
                "the delta builds on version {} of store {:?}, but this data plane serves {}",
                update.base_version,
                update.store_id,
                serving.map_or("nothing".to_owned(), |(s, v)| format!(
                    "version {v} of store {s:?}"
                ))
            ),
        ));
    };
    let mut next = if update.config_unchanged {
        pb::Snapshot {
            providers: base.providers.clone(),
            routes: base.routes.clone(),
            prices: base.prices.clone(),
            modules: base.modules.clone(),
            ..Default::default()
        }
    } else {
        pb::Snapshot {
            providers: update.providers,
            routes: update.routes,
            prices: update.prices,
            modules: update.modules,
            ..Default::default()
        }
    };
    next.store_id = update.store_id;
    next.version = update.version;

    let mut tenants: HashMap<u64, pb::Tenant> = base.tenants.iter().map(|t| (t.id, t.clone())).collect();
    for id in &update.removed_tenants {
        tenants.remove(id);
    }
    tenants.extend(update.tenants.into_iter().map(|t| (t.id, t)));
    let mut keys: HashMap<String, pb::VirtualKey> =
        base.keys.iter().map(|k| (k.id.clone(), k.clone())).collect();
    for id in &update.removed_keys {
        keys.remove(id);
    }
    keys.extend(update.keys.into_iter().map(|k| (k.id.clone(), k)));
    next.tenants = tenants.into_values().collect();
    next.tenants.sort_by_key(|t| t.id);
    next.keys = keys.into_values().collect();
    next.keys.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, tenant_id: u64) -> pb::VirtualKey {
        pb::VirtualKey {
            id: id.into(),
            tenant_id,
            hash: vec![1; 32],
            ..Default::default()
        }
    }

    fn tenant(id: u64, suspended: bool) -> pb::Tenant {
        pb::Tenant {
            id,
            name: format!("t{id}"),
            suspended,
        }
    }

    fn base() -> pb::Snapshot {
        pb::Snapshot {
            store_id: "s".into(),
            version: 5,
            modules: vec![pb::Module {
                name: "auth".into(),
                enabled: true,
                available: true,
            }],
            tenants: vec![tenant(1, false), tenant(2, false)],
            keys: vec![key("key_a", 1), key("key_b", 2)],
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_changes_only_what_it_names() {
        let delta = pb::Snapshot {
            store_id: "s".into(),
            version: 7,
            base_version: 5,
            config_unchanged: true,
            tenants: vec![tenant(2, true)],
            removed_tenants: vec![1],
            keys: vec![key("key_c", 2)],
            removed_keys: vec!["key_a".into(), "key_never_seen".into()],
            ..Default::default()
        };
        let next = apply(Some(&base()), delta).unwrap();
        assert_eq!(
            (next.version, next.base_version, next.config_unchanged),
            (7, 0, false)
        );
        assert_eq!(next.modules, base().modules, "config kept");
        assert_eq!(next.tenants, [tenant(2, true)]);
        assert_eq!(
            next.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["key_b", "key_c"]
        );
        // A delta with a config replaces the config.
        let delta = pb::Snapshot {
            store_id: "s".into(),
            version: 6,
            base_version: 5,
            ..Default::default()
        };
        let next = apply(Some(&base()), delta).unwrap();
        assert!(next.modules.is_empty());
        assert_eq!(next.keys.len(), 2);
    }

    #[test]
    fn a_delta_on_another_base_is_refused() {
        let on = |store: &str, base_version: u64| pb::Snapshot {
            store_id: store.into(),
            version: 9,
            base_version,
            config_unchanged: true,
            ..Default::default()
        };
        for wrong in [on("s", 4), on("other", 5)] {
            assert_eq!(apply(Some(&base()), wrong).unwrap_err().field, "base_version");
        }
        let e = apply(None, on("s", 5)).unwrap_err();
        assert!(e.reason.contains("serves nothing"), "{e}");
        // A complete snapshot needs no base.
        let complete = pb::Snapshot {
            store_id: "other".into(),
            version: 1,
            ..Default::default()
        };
        assert_eq!(apply(None, complete.clone()).unwrap(), complete);
        let bad = pb::Snapshot {
            config_unchanged: true,
            ..complete
        };
        assert!(apply(Some(&base()), bad).is_err());
    }
}
