//! Route resolution: the public model name a caller asked for → the targets to try, in order.

use std::sync::Arc;

use drover_proto::model::Strategy;

use crate::policy::{CompiledTarget, Policy};
use crate::proxy::health::HealthRegistry;

/// Targets for `model`, in the order to try them; `None` if the name is neither an alias
/// nor a `provider/model` of a known provider. Aliases win over direct names.
pub fn candidates(policy: &Policy, model: &str, health: &HealthRegistry) -> Option<Vec<Arc<CompiledTarget>>> {
    if let Some(route) = policy.routes.get(model) {
        let mut targets = route.targets.clone();
        if route.strategy == Strategy::Weighted && targets.len() > 1 {
            let first = pick_weighted(&targets, route.total_weight, rand::random::<u64>());
            // The pick first, then the others by descending weight (the compiled order).
            let picked = targets.remove(first);
            targets.insert(0, picked);
        }
        return Some(targets);
    }
    policy.direct_target(model, health).map(|t| vec![t])
}

/// Index of the target that `roll` lands on, with probability proportional to weight.
fn pick_weighted(targets: &[Arc<CompiledTarget>], total_weight: u64, roll: u64) -> usize {
    if total_weight == 0 {
        return 0;
    }
    let mut point = roll % total_weight;
    for (i, t) in targets.iter().enumerate() {
        let w = u64::from(t.weight);
        if point < w {
            return i;
        }
        point -= w;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use drover_proto::pb;

    fn policy() -> (Policy, HealthRegistry) {
        let health = HealthRegistry::default();
        let target = |m: &str, w| pb::Target {
            provider: "p".into(),
            model: m.into(),
            weight: w,
        };
        let snap = pb::Snapshot {
            store_id: "s".into(),
            version: 1,
            providers: vec![pb::Provider {
                name: "p".into(),
                kind: pb::ProviderKind::Openai as i32,
                base_url: "http://127.0.0.1:1/v1".into(),
                credential: None,
                api_version: String::new(),
            }],
            routes: vec![
                pb::Route {
                    alias: "w".into(),
                    strategy: pb::RouteStrategy::Weighted as i32,
                    targets: vec![target("a", 1), target("b", 3)],
                    cache_ttl_secs: 0,
                    retry_after_send: false,
                },
                pb::Route {
                    alias: "f".into(),
                    strategy: 0,
                    targets: vec![target("x", 0), target("y", 0)],
                    cache_ttl_secs: 0,
                    retry_after_send: false,
                },
                pb::Route {
                    alias: "p/shadowed".into(),
                    strategy: 0,
                    targets: vec![target("real", 0)],
                    cache_ttl_secs: 0,
                    retry_after_send: false,
                },
            ],
            prices: vec![],
            modules: vec![],
        };
        let env: crate::providers::EnvLookup = Arc::new(|_: &str| None);
        (Policy::compile(&snap, &env, &health).unwrap(), health)
    }

    fn models(v: &[Arc<CompiledTarget>]) -> Vec<&str> {
        v.iter().map(|t| t.model.as_str()).collect()
    }

    #[test]
    fn fallback_keeps_order_and_direct_names_resolve() {
        let (p, h) = policy();
        assert_eq!(models(&candidates(&p, "f", &h).unwrap()), ["x", "y"]);
        assert_eq!(models(&candidates(&p, "p/anything", &h).unwrap()), ["anything"]);
        assert_eq!(
            models(&candidates(&p, "p/shadowed", &h).unwrap()),
            ["real"],
            "alias wins"
        );
        assert!(candidates(&p, "nope", &h).is_none());
        assert!(candidates(&p, "q/model", &h).is_none());
    }

    #[test]
    fn weighted_picks_in_proportion() {
        let (p, _) = policy();
        let route = &p.routes["w"];
        let mut counts = [0u32; 2];
        for roll in 0..4000u64 {
            counts[pick_weighted(&route.targets, route.total_weight, roll)] += 1;
        }
        // compiled order is by descending weight: b (3) then a (1)
        assert_eq!(route.targets[0].model, "b");
        assert_eq!(counts, [3000, 1000]);
    }
}
