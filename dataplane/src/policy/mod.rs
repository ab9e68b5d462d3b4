//! The policy the data plane serves: one immutable, pre-indexed [`Policy`] behind one
//! `ArcSwapOption`, compiled from a snapshot streamed by the control plane.
//!
//! Compiling is fallible (validate, resolve credentials, index); swapping is one infallible
//! store. State that must outlive a swap (circuit breakers) lives in [`crate::proxy::health`],
//! keyed by target id, and is carried into each new policy here. Owns no I/O: the stream
//! client is in `client`, the last-good file in `last_good`.

pub mod client;
pub mod last_good;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use drover_proto::model::{self, InvalidPolicy, Modules, Strategy};
use drover_proto::pb;

use crate::providers::{EnvLookup, ProviderRt};
use crate::proxy::health::{HealthRegistry, TargetHealth};

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

/// Everything a request needs to be decided, for one snapshot version.
#[derive(Debug)]
pub struct Policy {
    pub store_id: String,
    pub version: u64,
    pub providers: HashMap<String, Arc<ProviderRt>>,
    pub routes: HashMap<String, CompiledRoute>,
    pub modules: Modules,
    /// Prices by `provider/model` (a per-provider override) or `model`.
    pub prices: HashMap<String, model::Price>,
    /// The body of `GET /v1/models`, rendered once.
    pub models_body: Bytes,
    /// The same list in Anthropic's shape.
    pub anthropic_models_body: Bytes,
    /// The encoded snapshot, for the last-good file.
    pub encoded: Bytes,
}

fn json_string(s: &str) -> Bytes {
    Bytes::from(serde_json::Value::String(s.to_owned()).to_string())
}

impl Policy {
    /// Validates and indexes a snapshot. Never touches the serving policy.
    pub fn compile(
        snapshot: &pb::Snapshot,
        env: &EnvLookup,
        health: &HealthRegistry,
    ) -> Result<Self, InvalidPolicy> {
        let valid = model::Snapshot::try_from(snapshot)?;
        let mut providers = HashMap::with_capacity(valid.providers.len());
        for p in &valid.providers {
            providers.insert(p.name.clone(), Arc::new(ProviderRt::compile(p, env)?));
        }
        let mut routes = HashMap::with_capacity(valid.routes.len());
        let mut listed: Vec<(String, String)> = Vec::new();
        for r in &valid.routes {
            let mut targets = Vec::with_capacity(r.targets.len());
            for t in &r.targets {
                let provider = providers.get(&t.provider).cloned().ok_or_else(|| {
                    InvalidPolicy::new(
                        format!("route {:?}", r.alias),
                        format!("unknown provider {:?}", t.provider),
                    )
                })?;
                let id = t.id();
                targets.push(Arc::new(CompiledTarget {
                    health: health.get(&id),
                    id,
                    provider,
                    model_json: json_string(&t.model),
                    model: t.model.clone(),
                    weight: t.weight,
                }));
            }
            if r.strategy == Strategy::Weighted {
                targets.sort_by_key(|t| std::cmp::Reverse(t.weight));
            }
            let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
            listed.push((r.alias.clone(), "drover".to_owned()));
            for t in &targets {
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
        health.retain_providers(|name| providers.contains_key(name));
        listed.sort();
        listed.dedup_by(|a, b| a.0 == b.0);
        let data: Vec<_> = listed
            .iter()
            .map(|(id, owner)| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
            .collect();
        let models_body = Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string());
        let anthropic_data: Vec<_> = listed
            .iter()
            .map(|(id, _)| {
                serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"})
            })
            .collect();
        let anthropic_models_body = Bytes::from(
            serde_json::json!({
                "data": anthropic_data,
                "has_more": false,
                "first_id": listed.first().map(|(id, _)| id),
                "last_id": listed.last().map(|(id, _)| id),
            })
            .to_string(),
        );
        Ok(Policy {
            store_id: valid.store_id,
            version: valid.version,
            providers,
            routes,
            modules: valid.modules,
            prices: valid
                .prices
                .iter()
                .map(|p| (p.model.clone(), p.clone()))
                .collect(),
            models_body,
            anthropic_models_body,
            encoded: Bytes::from(prost::Message::encode_to_vec(snapshot)),
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

    /// A direct `provider/model` target, built for one request.
    pub fn direct_target(&self, name: &str, health: &HealthRegistry) -> Option<Arc<CompiledTarget>> {
        let (provider, model) = name.split_once('/')?;
        if model.is_empty() {
            return None;
        }
        let provider = self.providers.get(provider)?.clone();
        Some(Arc::new(CompiledTarget {
            id: name.to_owned(),
            health: health.get(name),
            provider,
            model_json: json_string(model),
            model: model.to_owned(),
            weight: 1,
        }))
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
        Arc::new(|var: &str| (var == "KEY_SET").then(|| "sk-test".to_owned()))
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
        }
    }

    #[test]
    fn compiles_routes_models_and_credentials() {
        let health = HealthRegistry::default();
        let p = Policy::compile(&snapshot("KEY_SET"), &env(), &health).unwrap();
        let route = &p.routes["fast"];
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
        let req = p.providers["up"].request(&up, Bytes::new()).unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer sk-test");
        assert!(req.headers()["authorization"].is_sensitive());
        let models: serde_json::Value = serde_json::from_slice(&p.models_body).unwrap();
        let ids: Vec<_> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["fast", "up/big", "up/small"]);
    }

    #[test]
    fn health_state_survives_recompiles() {
        let health = HealthRegistry::default();
        let a = Policy::compile(&snapshot("KEY_SET"), &env(), &health).unwrap();
        let b = Policy::compile(&snapshot("KEY_SET"), &env(), &health).unwrap();
        assert!(Arc::ptr_eq(
            &a.routes["fast"].targets[0].health,
            &b.routes["fast"].targets[0].health
        ));
        let direct = b.direct_target("up/big", &health).unwrap();
        assert!(Arc::ptr_eq(&direct.health, &b.routes["fast"].targets[0].health));
        assert!(b.direct_target("nope/big", &health).is_none());
        assert!(b.direct_target("up/", &health).is_none());
    }

    #[test]
    fn unresolvable_credential_is_rejected() {
        let err = Policy::compile(&snapshot("KEY_MISSING"), &env(), &HealthRegistry::default()).unwrap_err();
        assert!(err.to_string().contains("KEY_MISSING is not set"), "{err}");
    }
}
