//! Route resolution: the public model name a caller asked for → the targets to try, in order.
//!
//! A requested name is at most [`MAX_REQUEST_MODEL_LEN`] bytes without control characters
//! (else 400, before any lookup); a direct `provider/model` name must suit its provider's kind
//! (see `model::validate_target_model`), so a caller can never steer the upstream URL.

use std::sync::Arc;

use drover_proto::model::{InvalidPolicy, MAX_REQUEST_MODEL_LEN, Strategy};

use crate::formats::json::BodyError;

use crate::health::HealthRegistry;
use crate::policy::{CompiledTarget, Policy};

/// Refuses a requested model name that no alias or direct name can be: longer than
/// [`MAX_REQUEST_MODEL_LEN`] bytes, or with control characters.
pub fn check_requested(model: &str) -> Result<(), BodyError> {
    let why = if model.len() > MAX_REQUEST_MODEL_LEN {
        format!("model must be at most {MAX_REQUEST_MODEL_LEN} bytes")
    } else if model.chars().any(char::is_control) {
        "model must not contain control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(BodyError {
        message: why,
        param: Some("model"),
    })
}

/// Targets for `model`, in the order to try them; `None` if the name is neither an alias
/// nor a `provider/model` of a known provider. Aliases win over direct names. A direct name
/// whose model cannot be sent to its provider is an error (see [`Policy::direct_target`]).
pub fn candidates(
    policy: &Policy,
    model: &str,
    health: &HealthRegistry,
) -> Result<Option<Vec<Arc<CompiledTarget>>>, InvalidPolicy> {
    if let Some(route) = policy.config.routes.get(model) {
        let mut targets = route.targets.clone();
        if route.strategy == Strategy::Weighted && targets.len() > 1 {
            let first = pick_weighted(&targets, route.total_weight, rand::random::<u64>());
            // The pick first, then the others by descending weight (the compiled order).
            let picked = targets.remove(first);
            targets.insert(0, picked);
        }
        return Ok(Some(targets));
    }
    Ok(policy.config.direct_target(model, health)?.map(|t| vec![t]))
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
                responses_api: 0,
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
            ..Default::default()
        };
        let env: crate::providers::EnvLookup = Arc::new(|_: &str| None);
        let allow = crate::providers::credential::EnvAllowList::default();
        (
            Policy::compile(
                &snap,
                &env,
                &allow,
                &health,
                &crate::limits::LeaseTable::default(),
            )
            .unwrap(),
            health,
        )
    }

    fn models(v: &[Arc<CompiledTarget>]) -> Vec<&str> {
        v.iter().map(|t| t.model.as_str()).collect()
    }

    #[test]
    fn fallback_keeps_order_and_direct_names_resolve() {
        let (p, h) = policy();
        assert_eq!(models(&candidates(&p, "f", &h).unwrap().unwrap()), ["x", "y"]);
        assert_eq!(
            models(&candidates(&p, "p/anything", &h).unwrap().unwrap()),
            ["anything"]
        );
        assert_eq!(
            models(&candidates(&p, "p/shadowed", &h).unwrap().unwrap()),
            ["real"],
            "alias wins"
        );
        assert!(candidates(&p, "nope", &h).unwrap().is_none());
        assert!(candidates(&p, "q/model", &h).unwrap().is_none());
        // Kinds with the model in the body take any model name; the name itself is checked.
        assert_eq!(
            models(&candidates(&p, "p/a/b?c#d", &h).unwrap().unwrap()),
            ["a/b?c#d"]
        );
        assert_eq!(candidates(&p, "p/a\u{7}", &h).unwrap_err().field, "model");
    }

    #[test]
    fn requested_names_are_bounded() {
        assert!(check_requested(&"m".repeat(MAX_REQUEST_MODEL_LEN)).is_ok());
        assert!(check_requested("openai/gpt-4o ü").is_ok());
        for bad in [
            "a\nb".to_owned(),
            "\u{0}".to_owned(),
            "x\u{9b}".to_owned(),
            "m".repeat(MAX_REQUEST_MODEL_LEN + 1),
        ] {
            let err = check_requested(&bad).unwrap_err();
            assert_eq!(err.param, Some("model"));
            assert!(!err.message.contains(&bad), "the name is not echoed");
        }
    }

    #[test]
    fn weighted_picks_in_proportion() {
        let (p, _) = policy();
        let route = &p.config.routes["w"];
        let mut counts = [0u32; 2];
        for roll in 0..4000u64 {
            counts[pick_weighted(&route.targets, route.total_weight, roll)] += 1;
        }
        // compiled order is by descending weight: b (3) then a (1)
        assert_eq!(route.targets[0].model, "b");
        assert_eq!(counts, [3000, 1000]);
    }
}
