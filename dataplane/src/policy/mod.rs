//! The policy the data plane serves: one immutable, pre-indexed [`Policy`] behind one
//! `ArcSwapOption`, compiled from a snapshot streamed by the control plane.
//!
//! Compiling is fallible (validate, resolve credentials, index); swapping is one infallible
//! store. State that must outlive a swap (circuit breakers) lives in [`crate::health`],
//! keyed by target id, and is carried into each new policy here. Owns no I/O: the stream
//! client is in `client`, the last-good file in `last_good`.
//!
//! Only what makes the whole snapshot unusable fails a compile (and is NACKed): invalid policy.
//! A provider this data plane cannot use (its credential cannot be resolved here) is compiled as
//! unavailable and listed in [`Policy::unavailable`]: requests that need it get a 503 naming it,
//! failover skips it, and everything else is served. Likewise a route target whose model its
//! provider's kind cannot carry (see `model::validate_target_model`; a store written by an
//! older version may hold one) is compiled as unusable, listed in [`Policy::unusable_targets`],
//! and never sent.

pub mod client;
pub mod last_good;
pub mod tenancy;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use drover_proto::model::{
    self, InvalidPolicy, Modules, Strategy, UnavailableProvider, UnusableTarget, validate_target_model,
};
use drover_proto::pb;

use crate::health::{HealthRegistry, TargetHealth};
use crate::limits::LeaseTable;
use crate::providers::credential::EnvAllowList;
use crate::providers::{EnvLookup, ProviderRt};
use tenancy::Tenancy;

/// One upstream model, resolved: its provider, the model name ready to splice into a body,
/// and the health state shared with every earlier policy that had the same target.
#[derive(Debug)]
pub struct CompiledTarget {
    /// `provider/model`.
    pub id: String,
    pub provider: Arc<ProviderRt>,
    pub model: String,
    /// `model` as a JSON string.
    pub model_json: Bytes,
    pub weight: u32,
    pub health: Arc<TargetHealth>,
    /// Why this target is never sent (its model cannot go to its provider's kind); `None` when
    /// it can be. Failover skips it like a target on an unavailable provider.
    pub unusable: Option<String>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub strategy: Strategy,
    /// In the order given (fallback) or by descending weight (weighted).
    pub targets: Vec<Arc<CompiledTarget>>,
    pub total_weight: u64,
    /// Response cache TTL; `None`: answers of this route are not cached.
    pub cache_ttl: Option<std::time::Duration>,
    /// Whether an attempt that broke after the request was sent may be retried.
    pub retry_after_send: bool,
}

/// Everything a request needs to be decided, for one snapshot version: the config, which a
/// version shares with the one before when only tenants or keys changed, and the tenancy.
#[derive(Debug)]
pub struct Policy {
    pub store_id: String,
    pub version: u64,
    pub config: Arc<PolicyConfig>,
    pub tenancy: Tenancy,
}

/// Providers, routes, prices and module flags, compiled.
#[derive(Debug)]
pub struct PolicyConfig {
    pub providers: HashMap<String, Arc<ProviderRt>>,
    /// Providers this data plane cannot use, with why, sorted by name.
    pub unavailable: Vec<UnavailableProvider>,
    /// Route targets this data plane never sends, with why, sorted by route and target.
    pub unusable_targets: Vec<UnusableTarget>,
    pub routes: HashMap<String, CompiledRoute>,
    pub modules: Modules,
    /// Prices by `provider/model` (a per-provider override) or `model`.
    pub prices: HashMap<String, model::Price>,
    /// Every name `GET /v1/models` lists (aliases and direct targets) with its owner, sorted.
    pub listed: Vec<(String, String)>,
    /// The body of `GET /v1/models`, rendered once.
    pub models_body: Bytes,
    /// The same list in Anthropic's shape.
    pub anthropic_models_body: Bytes,
    /// The config as it came, for the last-good file.
    wire: pb::Snapshot,
}

/// The body of OpenAI's `GET /v1/models` for `listed` (name, owner).
pub fn openai_models_body(listed: &[(String, String)]) -> Bytes {
    let data: Vec<_> = listed
        .iter()
        .map(|(id, owner)| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

/// The same list in Anthropic's shape.
pub fn anthropic_models_body(listed: &[(String, String)]) -> Bytes {
    let data: Vec<_> = listed
        .iter()
        .map(|(id, _)| {
            serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    Bytes::from(
        serde_json::json!({
            "data": data,
            "has_more": false,
            "first_id": listed.first().map(|(id, _)| id),
            "last_id": listed.last().map(|(id, _)| id),
        })
        .to_string(),
    )
}

fn json_string(s: &str) -> Bytes {
    Bytes::from(serde_json::Value::String(s.to_owned()).to_string())
}

impl Policy {
    /// Validates and indexes a complete snapshot, resolving `env:VAR` credentials through `env`
    /// for the variables `allow` lets through. Never touches the serving policy. Target health
    /// and lease cells outlive policies: the compiled policy links to those in `health` and
    /// `leases` by stable id, making them where missing.
    pub fn compile(
        snapshot: &pb::Snapshot,
        env: &EnvLookup,
        allow: &EnvAllowList,
        health: &HealthRegistry,
        leases: &LeaseTable,
    ) -> Result<Self, InvalidPolicy> {
        if snapshot.base_version != 0 || snapshot.config_unchanged {
            return Err(InvalidPolicy::new(
                "base_version",
                "a delta arrived where a complete snapshot was needed",
            ));
        }
        Ok(Policy {
            store_id: snapshot.store_id.clone(),
            version: snapshot.version,
            config: Arc::new(PolicyConfig::compile(snapshot, env, allow, health)?),
            tenancy: Tenancy::complete(&snapshot.tenants, &snapshot.keys, leases)?,
        })
    }

    /// The policy `update` leads to from this one: a complete snapshot is compiled whole; a
    /// delta must build on this version, and shares the config (unless it brings one) and
    /// every key it does not touch.
    pub fn apply(
        &self,
        update: &pb::Snapshot,
        env: &EnvLookup,
        allow: &EnvAllowList,
        health: &HealthRegistry,
        leases: &LeaseTable,
    ) -> Result<Self, InvalidPolicy> {
        if update.base_version == 0 {
            return Policy::compile(update, env, allow, health, leases);
        }
        if update.store_id != self.store_id || update.base_version != self.version {
            return Err(InvalidPolicy::new(
                "base_version",
                format!(
                    "the delta builds on version {} of store {:?}, but this data plane serves version {} of store {:?}",
                    update.base_version, update.store_id, self.version, self.store_id
                ),
            ));
        }
        let config = if update.config_unchanged {
            self.config.clone()
        } else {
            Arc::new(PolicyConfig::compile(update, env, allow, health)?)
        };
        Ok(Policy {
            store_id: update.store_id.clone(),
            version: update.version,
            config,
            tenancy: self.tenancy.apply(
                &update.removed_tenants,
                &update.tenants,
                &update.removed_keys,
                &update.keys,
                leases,
            )?,
        })
    }

    /// The complete snapshot of this version, for the last-good file.
    pub fn to_wire(&self) -> pb::Snapshot {
        let (tenants, keys) = self.tenancy.to_wire();
        pb::Snapshot {
            store_id: self.store_id.clone(),
            version: self.version,
            tenants,
            keys,
            ..self.config.wire.clone()
        }
    }
}

impl PolicyConfig {
    /// Validates and indexes the config fields of `snapshot` (see [`Policy::compile`]).
    fn compile(
        snapshot: &pb::Snapshot,
        env: &EnvLookup,
        allow: &EnvAllowList,
        health: &HealthRegistry,
    ) -> Result<Self, InvalidPolicy> {
        let valid = model::Snapshot::try_from(snapshot)?;
        let mut providers = HashMap::with_capacity(valid.providers.len());
        let mut unavailable = Vec::new();
        for p in &valid.providers {
            let rt = ProviderRt::compile(p, env, allow);
            if let Some(reason) = &rt.unavailable {
                unavailable.push(UnavailableProvider {
                    provider: p.name.clone(),
                    reason: reason.clone(),
                });
            }
            providers.insert(p.name.clone(), Arc::new(rt));
        }
        unavailable.sort_by(|a, b| a.provider.cmp(&b.provider));
        let mut routes = HashMap::with_capacity(valid.routes.len());
        let mut listed: Vec<(String, String)> = Vec::new();
        let mut unusable_targets = Vec::new();
        for r in &valid.routes {
            let mut targets = Vec::with_capacity(r.targets.len());
            for t in &r.targets {
                let provider = providers.get(&t.provider).cloned().ok_or_else(|| {
                    InvalidPolicy::new(
                        format!("route {}", model::quoted(&r.alias)),
                        format!("unknown provider {:?}", t.provider),
                    )
                })?;
                let id = t.id();
                let unusable = validate_target_model(provider.kind, "model", &t.model)
                    .err()
                    .map(|e| e.reason);
                if let Some(reason) = &unusable {
                    unusable_targets.push(UnusableTarget {
                        route: r.alias.clone(),
                        target: id.clone(),
                        reason: reason.clone(),
                    });
                }
                targets.push(Arc::new(CompiledTarget {
                    health: health.configured(&id),
                    id,
                    provider,
                    model_json: json_string(&t.model),
                    model: t.model.clone(),
                    weight: t.weight,
                    unusable,
                }));
            }
            if r.strategy == Strategy::Weighted {
                targets.sort_by_key(|t| std::cmp::Reverse(t.weight));
            }
            let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
            listed.push((r.alias.clone(), "drover".to_owned()));
            // A target that is never sent cannot be asked for by its direct name either.
            for t in targets.iter().filter(|t| t.unusable.is_none()) {
                listed.push((t.id.clone(), t.provider.name.clone()));
            }
            let cache_ttl =
                (r.cache_ttl_secs > 0).then(|| std::time::Duration::from_secs(u64::from(r.cache_ttl_secs)));
            routes.insert(
                r.alias.clone(),
                CompiledRoute {
                    strategy: r.strategy,
                    targets,
                    total_weight,
                    cache_ttl,
                    retry_after_send: r.retry_after_send,
                },
            );
        }
        let ids: HashSet<&str> = routes
            .values()
            .flat_map(|r| r.targets.iter().map(|t| t.id.as_str()))
            .collect();
        health.retain(|id| ids.contains(id), |name| providers.contains_key(name));
        unusable_targets.sort_by(|a, b| (&a.route, &a.target).cmp(&(&b.route, &b.target)));
        listed.sort();
        listed.dedup_by(|a, b| a.0 == b.0);
        let models_body = openai_models_body(&listed);
        let anthropic_models_body = anthropic_models_body(&listed);
        Ok(PolicyConfig {
            providers,
            unavailable,
            unusable_targets,
            routes,
            modules: valid.modules,
            prices: valid
                .prices
                .iter()
                .map(|p| (p.model.clone(), p.clone()))
                .collect(),
            listed,
            models_body,
            anthropic_models_body,
            wire: pb::Snapshot {
                providers: snapshot.providers.clone(),
                routes: snapshot.routes.clone(),
                prices: snapshot.prices.clone(),
                modules: snapshot.modules.clone(),
                ..Default::default()
            },
        })
    }

    /// The price of `model` at `provider`: a `provider/model` override first, else the model's.
    pub fn price(&self, provider: &str, model: &str) -> Option<&model::Price> {
        if self.prices.is_empty() {
            return None;
        }
        self.prices
            .get(&format!("{provider}/{model}"))
            .or_else(|| self.prices.get(model))
    }

    /// The price of what `target` answers, as [`PolicyConfig::price`] finds it, without
    /// building the `provider/model` key (the target has it).
    pub fn target_price(&self, target: &CompiledTarget) -> Option<&model::Price> {
        if self.prices.is_empty() {
            return None;
        }
        self.prices
            .get(target.id.as_str())
            .or_else(|| self.prices.get(target.model.as_str()))
    }

    /// A direct `provider/model` target, built for one request: `Ok(None)` when `name` names
    /// no provider of this policy, an error when the model cannot be sent to that provider
    /// (see [`model::validate_target_model`]: it would change the URL the provider receives).
    pub fn direct_target(
        &self,
        name: &str,
        health: &HealthRegistry,
    ) -> Result<Option<Arc<CompiledTarget>>, InvalidPolicy> {
        let Some((provider, model)) = name.split_once('/') else {
            return Ok(None);
        };
        if model.is_empty() {
            return Ok(None);
        }
        let Some(provider) = self.providers.get(provider) else {
            return Ok(None);
        };
        validate_target_model(provider.kind, "model", model)?;
        Ok(Some(Arc::new(CompiledTarget {
            id: name.to_owned(),
            health: health.direct(name),
            provider: provider.clone(),
            model_json: json_string(model),
            model: model.to_owned(),
            weight: 1,
            unusable: None,
        })))
    }
}

/// The serving policy: `None` until the first snapshot is applied.
#[derive(Debug, Default)]
pub struct PolicyStore {
    current: ArcSwapOption<Policy>,
}

impl PolicyStore {
    /// The policy to decide one request with, start to end.
    pub fn load(&self) -> Option<Arc<Policy>> {
        self.current.load_full()
    }

    /// Swaps in a compiled policy. Infallible.
    pub fn store(&self, policy: Arc<Policy>) {
        self.current.store(Some(policy));
    }

    /// `(store_id, version)` of the serving policy, if any.
    pub fn serving(&self) -> Option<(String, u64)> {
        self.current
            .load()
            .as_ref()
            .map(|p| (p.store_id.clone(), p.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> EnvLookup {
        Arc::new(|var: &str| (var == "KEY_SET_API_KEY").then(|| "sk-test".to_owned()))
    }

    fn snapshot(env_var: &str) -> pb::Snapshot {
        pb::Snapshot {
            store_id: "s1".into(),
            version: 7,
            providers: vec![pb::Provider {
                name: "up".into(),
                kind: pb::ProviderKind::OpenaiCompatible as i32,
                base_url: "http://127.0.0.1:9/v1".into(),
                credential: Some(pb::provider::Credential::ApiKeyEnv(env_var.into())),
                api_version: String::new(),
                responses_api: 0,
            }],
            routes: vec![pb::Route {
                alias: "fast".into(),
                strategy: pb::RouteStrategy::Weighted as i32,
                targets: vec![
                    pb::Target {
                        provider: "up".into(),
                        model: "small".into(),
                        weight: 1,
                    },
                    pb::Target {
                        provider: "up".into(),
                        model: "big".into(),
                        weight: 9,
                    },
                ],
                cache_ttl_secs: 0,
                retry_after_send: false,
            }],
            prices: vec![],
            modules: vec![],
            ..Default::default()
        }
    }

    fn compile(snapshot: &pb::Snapshot, health: &HealthRegistry) -> Result<Policy, InvalidPolicy> {
        Policy::compile(
            snapshot,
            &env(),
            &EnvAllowList::default(),
            health,
            &LeaseTable::default(),
        )
    }

    #[test]
    fn compiles_routes_models_and_credentials() {
        let health = HealthRegistry::default();
        let p = compile(&snapshot("KEY_SET_API_KEY"), &health).unwrap();
        assert!(p.config.unavailable.is_empty());
        let route = &p.config.routes["fast"];
        assert_eq!(route.targets[0].model, "big", "weighted targets sorted by weight");
        assert_eq!(route.total_weight, 10);
        assert_eq!(&route.targets[0].model_json[..], b"\"big\"");
        let id = http::HeaderValue::from_static("r");
        let up = crate::providers::Upstream {
            op: crate::providers::Op::Chat,
            model: "big",
            stream: false,
            request_id: &id,
            anthropic_version: None,
            anthropic_beta: None,
        };
        let req = p.config.providers["up"].request(&up, Bytes::new()).unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer sk-test");
        assert!(req.headers()["authorization"].is_sensitive());
        let models: serde_json::Value = serde_json::from_slice(&p.config.models_body).unwrap();
        let ids: Vec<_> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["fast", "up/big", "up/small"]);
    }

    #[test]
    fn a_delta_applies_only_on_its_base_and_shares_the_config() {
        let health = HealthRegistry::default();
        let base = compile(&snapshot("KEY_SET_API_KEY"), &health).unwrap();
        let delta = |store: &str, base_version: u64| pb::Snapshot {
            store_id: store.into(),
            version: 9,
            base_version,
            config_unchanged: true,
            tenants: vec![pb::Tenant {
                id: 1,
                name: "acme".into(),
                suspended: false,
                ..Default::default()
            }],
            ..Default::default()
        };
        let apply = |d: pb::Snapshot| {
            base.apply(
                &d,
                &env(),
                &EnvAllowList::default(),
                &health,
                &LeaseTable::default(),
            )
        };
        for wrong in [delta("s1", 6), delta("other", 7)] {
            assert_eq!(apply(wrong).unwrap_err().field, "base_version");
        }
        let next = apply(delta("s1", 7)).unwrap();
        assert_eq!(next.version, 9);
        assert!(Arc::ptr_eq(&next.config, &base.config), "the config is shared");
        assert_eq!(next.to_wire().tenants.len(), 1);
        // A complete snapshot cannot claim an unchanged config.
        let bad = pb::Snapshot {
            config_unchanged: true,
            ..snapshot("KEY_SET_API_KEY")
        };
        assert!(compile(&bad, &health).is_err());
    }

    #[test]
    fn health_state_survives_recompiles() {
        let health = HealthRegistry::default();
        let a = compile(&snapshot("KEY_SET_API_KEY"), &health).unwrap();
        let b = compile(&snapshot("KEY_SET_API_KEY"), &health).unwrap();
        assert!(Arc::ptr_eq(
            &a.config.routes["fast"].targets[0].health,
            &b.config.routes["fast"].targets[0].health
        ));
        let direct = b.config.direct_target("up/big", &health).unwrap().unwrap();
        assert!(Arc::ptr_eq(
            &direct.health,
            &b.config.routes["fast"].targets[0].health
        ));
        assert!(b.config.direct_target("nope/big", &health).unwrap().is_none());
        assert!(b.config.direct_target("up/", &health).unwrap().is_none());
        assert!(b.config.direct_target("no-slash", &health).unwrap().is_none());
    }

    #[test]
    fn an_unresolvable_credential_marks_its_provider_unavailable_and_the_rest_compiles() {
        let mut s = snapshot("KEY_MISSING_API_KEY");
        s.providers.push(pb::Provider {
            name: "good".into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "http://127.0.0.1:9/v1".into(),
            credential: Some(pb::provider::Credential::ApiKeyEnv("KEY_SET_API_KEY".into())),
            api_version: String::new(),
            responses_api: 0,
        });
        s.providers.push(pb::Provider {
            name: "greedy".into(),
            kind: pb::ProviderKind::Openai as i32,
            base_url: "http://127.0.0.1:9/v1".into(),
            credential: Some(pb::provider::Credential::ApiKeyEnv("DROVER_ADMIN_TOKEN".into())),
            api_version: String::new(),
            responses_api: 0,
        });
        let p = compile(&s, &HealthRegistry::default()).unwrap();
        assert_eq!(p.version, 7);
        let reasons: Vec<(&str, &str)> = p
            .config
            .unavailable
            .iter()
            .map(|u| (u.provider.as_str(), u.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "greedy",
                    "environment variable DROVER_ADMIN_TOKEN is one of Drover's own settings (DROVER_*) and is never sent to a provider"
                ),
                (
                    "up",
                    "environment variable KEY_MISSING_API_KEY is not set on this data plane"
                ),
            ]
        );
        assert!(p.config.providers["good"].unavailable.is_none());
        assert!(p.config.providers["up"].unavailable.is_some());
        assert_eq!(
            p.config.routes["fast"].targets.len(),
            2,
            "its routes are kept; failover skips it"
        );
    }

    #[test]
    fn a_route_target_that_would_steer_the_url_is_unusable_and_the_rest_compiles() {
        for (kind, model, usable) in [
            (pb::ProviderKind::Azure, "my-deployment", true),
            (pb::ProviderKind::Azure, "../../x?evil=1", false),
            (pb::ProviderKind::Azure, "dep#frag", false),
            (pb::ProviderKind::Azure, "team/gpt-4o", false),
            (pb::ProviderKind::Gemini, "gemini-2.5-flash", true),
            (
                pb::ProviderKind::Gemini,
                "gemini-pro:streamGenerateContent",
                false,
            ),
            (pb::ProviderKind::Gemini, "..", false),
            (pb::ProviderKind::OpenaiCompatible, "meta-llama/Llama-3-70b", true),
            (pb::ProviderKind::OpenaiCompatible, "llama3:8b", true),
        ] {
            let mut s = snapshot("KEY_SET_API_KEY");
            s.providers[0].kind = kind as i32;
            s.routes[0].targets[0].model = model.into();
            let p = compile(&s, &HealthRegistry::default()).unwrap();
            let route = &p.config.routes["fast"];
            let target = route.targets.iter().find(|t| t.model == model).unwrap();
            let other = route.targets.iter().find(|t| t.model == "big").unwrap();
            assert!(other.unusable.is_none(), "{kind:?} {model:?}");
            let models: serde_json::Value = serde_json::from_slice(&p.config.models_body).unwrap();
            let listed = models["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == format!("up/{model}"));
            assert_eq!(listed, usable, "{kind:?} {model:?}: listed as a direct name");
            if usable {
                assert!(target.unusable.is_none(), "{kind:?} {model:?}");
                assert!(p.config.unusable_targets.is_empty());
                continue;
            }
            let reason = target.unusable.clone().unwrap();
            assert!(reason.contains("goes into the request URL"), "{reason}");
            assert_eq!(
                p.config.unusable_targets,
                [UnusableTarget {
                    route: "fast".into(),
                    target: format!("up/{model}"),
                    reason,
                }]
            );
        }
        // A model no provider may be sent is invalid policy still.
        let mut s = snapshot("KEY_SET_API_KEY");
        s.routes[0].targets[0].model = "a\u{0}b".into();
        let err = compile(&s, &HealthRegistry::default()).unwrap_err();
        assert!(err.field.starts_with("route \"fast\"/targets[0]"), "{err}");
    }

    #[test]
    fn direct_names_that_would_steer_the_url_are_refused() {
        let mut s = snapshot("KEY_SET_API_KEY");
        s.providers[0].kind = pb::ProviderKind::Gemini as i32;
        s.routes.clear();
        let health = HealthRegistry::default();
        let p = compile(&s, &health).unwrap();
        assert_eq!(
            p.config
                .direct_target("up/gemini-2.5-flash", &health)
                .unwrap()
                .unwrap()
                .model,
            "gemini-2.5-flash"
        );
        for bad in [
            "up/m:streamGenerateContent?alt=sse",
            "up/a/b",
            "up/..",
            "up/\u{fc}",
            "up/a b",
        ] {
            let err = p.config.direct_target(bad, &health).unwrap_err();
            assert_eq!(err.field, "model", "{bad}");
        }
        assert_eq!(health.len(), (0, 0), "nothing remembered for refused names");
    }
}
