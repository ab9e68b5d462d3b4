//! The config of a policy snapshot (providers, routes, prices, modules), validated. Tenants and
//! keys, which travel as deltas, are validated entry by entry (`Tenant`, `VirtualKey`).

use std::collections::HashSet;

use super::{InvalidPolicy, Modules, Price, Provider, Route, quoted};
use crate::pb;

/// A complete, validated policy snapshot: every route names a provider that exists, names are unique.
///
/// Whether each target's model suits its provider's kind is not part of it: the admin API
/// refuses such targets when they are written (see [`validate_target_model`]), but a store
/// written by an older version may hold one, and one such target must not make every later
/// snapshot invalid. A data plane checks it per target and leaves an unfit one unusable.
///
/// [`validate_target_model`]: super::validate_target_model
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub store_id: String,
    pub version: u64,
    pub providers: Vec<Provider>,
    pub routes: Vec<Route>,
    pub prices: Vec<Price>,
    pub modules: Modules,
}

impl TryFrom<&pb::Snapshot> for Snapshot {
    type Error = InvalidPolicy;

    fn try_from(s: &pb::Snapshot) -> Result<Self, InvalidPolicy> {
        if s.version == 0 {
            return Err(InvalidPolicy::new("version", "must not be 0"));
        }
        let providers = s
            .providers
            .iter()
            .map(Provider::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = HashSet::with_capacity(providers.len());
        for p in &providers {
            if !names.insert(p.name.as_str()) {
                return Err(InvalidPolicy::new(
                    format!("provider {}", quoted(&p.name)),
                    "defined twice",
                ));
            }
        }
        let routes = s
            .routes
            .iter()
            .map(Route::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut aliases = HashSet::new();
        for r in &routes {
            if !aliases.insert(r.alias.as_str()) {
                return Err(InvalidPolicy::new(
                    format!("route {}", quoted(&r.alias)),
                    "defined twice",
                ));
            }
            for t in &r.targets {
                if !names.contains(t.provider.as_str()) {
                    return Err(InvalidPolicy::new(
                        format!("route {}", quoted(&r.alias)),
                        format!(
                            "target {} names unknown provider {:?}",
                            quoted(&t.id()),
                            t.provider
                        ),
                    ));
                }
            }
        }
        let prices = s
            .prices
            .iter()
            .map(Price::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut models = HashSet::new();
        for p in &prices {
            if !models.insert(p.model.as_str()) {
                return Err(InvalidPolicy::new(
                    format!("price {}", quoted(&p.model)),
                    "defined twice",
                ));
            }
        }
        Ok(Snapshot {
            store_id: s.store_id.clone(),
            version: s.version,
            providers,
            routes,
            prices,
            modules: Modules::from_wire(&s.modules),
        })
    }
}

impl From<&Snapshot> for pb::Snapshot {
    fn from(s: &Snapshot) -> Self {
        pb::Snapshot {
            store_id: s.store_id.clone(),
            version: s.version,
            providers: s.providers.iter().map(Into::into).collect(),
            routes: s.routes.iter().map(Into::into).collect(),
            prices: s.prices.iter().map(Into::into).collect(),
            modules: s.modules.to_wire(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{azure, provider, route, snapshot};
    use crate::model::{MAX_API_VERSION_LEN, Module};

    #[test]
    fn valid_snapshot_round_trips() {
        let s = Snapshot::try_from(&snapshot()).unwrap();
        assert_eq!(s.providers[0].base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(s.routes[0].targets[0].weight, 1);
        assert!(s.modules.is_enabled(Module::Auth));
        let back = pb::Snapshot::from(&s);
        assert_eq!(Snapshot::try_from(&back).unwrap(), s);
    }

    #[test]
    fn route_to_unknown_provider_is_rejected() {
        let mut s = snapshot();
        s.routes.push(route("x", &[("nope", "m")]));
        let err = Snapshot::try_from(&s).unwrap_err();
        assert!(err.to_string().contains("unknown provider \"nope\""), "{err}");
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases: Vec<(pb::Snapshot, &str)> = vec![
            (
                {
                    let mut s = snapshot();
                    s.providers[0].name = String::new();
                    s
                },
                "must not be empty",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].base_url = "ftp://x".into();
                    s
                },
                "scheme must be http",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].base_url = "not a url".into();
                    s
                },
                "is not a URL",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].kind = 0;
                    s
                },
                "kind is required",
            ),
            (
                {
                    let mut s = snapshot();
                    s.routes[0].targets.clear();
                    s
                },
                "at least one target",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers.push(provider("openai"));
                    s
                },
                "defined twice",
            ),
            (
                {
                    let mut s = snapshot();
                    s.prices.push(pb::Price {
                        model: "m".into(),
                        input_per_mtok: -1.0,
                        ..Default::default()
                    });
                    s
                },
                "is not a price",
            ),
            (
                {
                    let mut s = snapshot();
                    s.prices.push(pb::Price {
                        model: "m".into(),
                        input_per_mtok: f64::NAN,
                        ..Default::default()
                    });
                    s
                },
                "is not a price",
            ),
            (
                {
                    let mut s = snapshot();
                    s.version = 0;
                    s
                },
                "must not be 0",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers[0].api_version = "2024-10-21".into();
                    s
                },
                "only azure providers take an api-version",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers.push(azure("az", "2024-10-21&x=1"));
                    s
                },
                "must be 1-64 of A-Z",
            ),
            (
                {
                    let mut s = snapshot();
                    s.providers
                        .push(azure("az", &"9".repeat(MAX_API_VERSION_LEN + 1)));
                    s
                },
                "must be 1-64 of A-Z",
            ),
        ];
        for (s, want) in cases {
            let err = Snapshot::try_from(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
