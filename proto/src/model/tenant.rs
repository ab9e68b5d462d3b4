//! Tenants: who a virtual key belongs to. The names, labels and states the admin API accepts,
//! and the tenant as a data plane receives it.

use std::collections::BTreeMap;

use super::limit::{Cap, Limits, OnCpLoss, caps_from_wire};
use super::names::validate_slug;
use super::{InvalidPolicy, quoted};
use crate::pb;

/// Longest tenant name, bytes.
pub const MAX_TENANT_NAME_LEN: usize = 64;
/// Most labels on one tenant.
pub const MAX_LABELS: usize = 64;
/// Longest label key, bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// Checks a tenant name: 1–64 of `[a-z0-9_-]`, starting with a letter.
pub fn validate_tenant_name(field: &str, name: &str) -> Result<(), InvalidPolicy> {
    validate_slug(field, "tenant name", name, MAX_TENANT_NAME_LEN)
}

/// Checks one label: a key of 1–63 of `[a-z0-9._/-]` starting with a letter or digit, and a
/// value of at most 256 bytes without control characters. `field` is the map's field name;
/// a violation names `field.key`.
pub fn validate_label(field: &str, key: &str, value: &str) -> Result<(), InvalidPolicy> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-'));
    if !key_ok {
        return Err(InvalidPolicy::new(
            field,
            format!(
                "label key {} must be 1-{MAX_LABEL_KEY_LEN} of a-z, 0-9, '.', '_', '/' and '-', starting with a letter or digit",
                quoted(key)
            ),
        ));
    }
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(InvalidPolicy::new(
            format!("{field}.{key}"),
            format!("is longer than {MAX_LABEL_VALUE_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidPolicy::new(
            format!("{field}.{key}"),
            format!("{} must not contain control characters", quoted(value)),
        ));
    }
    Ok(())
}

/// Checks a whole label set, and that it has at most [`MAX_LABELS`] labels.
pub fn validate_labels<'a>(
    field: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), InvalidPolicy> {
    let mut count = 0;
    for (k, v) in labels {
        validate_label(field, k, v)?;
        count += 1;
    }
    if count > MAX_LABELS {
        return Err(InvalidPolicy::new(
            field,
            format!("{count} labels; at most {MAX_LABELS}"),
        ));
    }
    Ok(())
}

/// Labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// A tenant as a data plane holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: u64,
    pub name: String,
    pub suspended: bool,
    /// Rate limits on all its keys together.
    pub limits: Limits,
    /// Spend caps on all its keys together, at most one per period.
    pub caps: Vec<Cap>,
    pub on_cp_loss: OnCpLoss,
}

impl TryFrom<&pb::Tenant> for Tenant {
    type Error = InvalidPolicy;

    fn try_from(t: &pb::Tenant) -> Result<Self, InvalidPolicy> {
        if t.id == 0 {
            return Err(InvalidPolicy::new("tenant/id", "must not be 0"));
        }
        validate_tenant_name("tenant/name", &t.name)?;
        let within = |e: InvalidPolicy| e.within(&format!("tenant {}", quoted(&t.name)));
        Ok(Tenant {
            id: t.id,
            name: t.name.clone(),
            suspended: t.suspended,
            limits: Limits::try_from(t.limits.as_ref()).map_err(within)?,
            caps: caps_from_wire(&t.caps).map_err(within)?,
            on_cp_loss: if t.fail_closed {
                OnCpLoss::Closed
            } else {
                OnCpLoss::Open
            },
        })
    }
}

impl From<&Tenant> for pb::Tenant {
    fn from(t: &Tenant) -> Self {
        pb::Tenant {
            id: t.id,
            name: t.name.clone(),
            suspended: t.suspended,
            limits: (&t.limits).into(),
            caps: t.caps.iter().map(pb::Cap::from).collect(),
            fail_closed: t.on_cp_loss == OnCpLoss::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_and_labels() {
        validate_tenant_name("name", "acme-prod_2").unwrap();
        for bad in ["", "Acme", "1acme", "a b", &"a".repeat(65)] {
            assert!(validate_tenant_name("name", bad).is_err(), "{bad:?}");
        }
        validate_label("labels", "team", "search").unwrap();
        validate_label("labels", "k8s.io/app", "").unwrap();
        let e = validate_label("labels", "team", "a\nb").unwrap_err();
        assert_eq!(e.field, "labels.team");
        assert!(validate_label("labels", "", "x").is_err());
        assert!(validate_label("labels", "Team", "x").is_err());
        assert!(validate_label("labels", "team", &"v".repeat(257)).is_err());
        let many: Labels = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_labels("labels", &many).is_err());
        assert!(validate_labels("labels", many.iter().take(64)).is_ok());
    }

    #[test]
    fn wire_tenants_are_checked() {
        let t = pb::Tenant {
            id: 7,
            name: "acme".into(),
            suspended: true,
            limits: Some(pb::Limits {
                rpm: 5,
                ..Default::default()
            }),
            caps: vec![pb::Cap {
                period: pb::CapPeriod::Day.into(),
                limit_nano_usd: 9,
                ..Default::default()
            }],
            fail_closed: true,
        };
        let model = Tenant::try_from(&t).unwrap();
        assert_eq!(pb::Tenant::from(&model), t);
        assert_eq!(model.on_cp_loss, OnCpLoss::Closed);
        assert!(Tenant::try_from(&pb::Tenant { id: 0, ..t.clone() }).is_err());
        let zero_cap = pb::Tenant {
            caps: vec![pb::Cap::default()],
            ..t.clone()
        };
        assert!(Tenant::try_from(&zero_cap).is_err());
        assert!(
            Tenant::try_from(&pb::Tenant {
                name: "A B".into(),
                ..t
            })
            .is_err()
        );
    }
}
