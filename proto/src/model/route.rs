//! Routes: a public model name, the targets it sends to, and how it picks among them.

use std::collections::HashSet;

use super::{InvalidPolicy, quoted, validate_model_name, validate_provider_name};
use crate::pb;

/// Most targets a route may have.
pub const MAX_TARGETS: usize = 64;
/// Largest target weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// How a route picks among its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Fallback,
    Weighted,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
        }
    }

    pub fn parse(name: &str) -> Result<Self, InvalidPolicy> {
        match name {
            "fallback" => Ok(Strategy::Fallback),
            "weighted" => Ok(Strategy::Weighted),
            other => Err(InvalidPolicy::new(
                "strategy",
                format!(
                    "unknown strategy {}; expected fallback or weighted",
                    quoted(other)
                ),
            )),
        }
    }

    pub fn to_wire(self) -> pb::RouteStrategy {
        match self {
            Strategy::Fallback => pb::RouteStrategy::Fallback,
            Strategy::Weighted => pb::RouteStrategy::Weighted,
        }
    }
}

/// One upstream model a route can send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: String,
    pub model: String,
    /// At least 1.
    pub weight: u32,
}

impl Target {
    /// Parses `provider/model` (the model may itself contain `/`).
    pub fn parse(spec: &str) -> Result<Self, InvalidPolicy> {
        let Some((provider, model)) = spec.split_once('/') else {
            return Err(InvalidPolicy::new(
                "target",
                format!("{} must be PROVIDER/MODEL", quoted(spec)),
            ));
        };
        validate_provider_name(provider).map_err(|e| InvalidPolicy::new("target", e.reason))?;
        validate_model_name("target", model)?;
        Ok(Target {
            provider: provider.to_owned(),
            model: model.to_owned(),
            weight: 1,
        })
    }

    /// `provider/model`: the stable identity of the target, e.g. for its circuit breaker.
    pub fn id(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

/// A public model name and the targets it routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub alias: String,
    pub strategy: Strategy,
    /// Never empty.
    pub targets: Vec<Target>,
    /// Response cache TTL; 0: not cached.
    pub cache_ttl_secs: u32,
    /// Whether an attempt that broke after the request was sent may be retried. Off by
    /// default: the provider may have done (and billed) the work already.
    pub retry_after_send: bool,
}

/// Longest response cache TTL accepted: 30 days.
pub const MAX_CACHE_TTL_SECS: u32 = 30 * 24 * 3600;

impl Route {
    /// A route as the admin API takes it: the rules every snapshot keeps, plus the limits on
    /// new input (at most [`MAX_TARGETS`] targets, checked before anything else). A route
    /// stored before such a limit existed still compiles on data planes: a snapshot is
    /// refused only for what makes it unusable.
    pub fn from_admin(r: &pb::Route) -> Result<Self, InvalidPolicy> {
        if r.targets.len() > MAX_TARGETS {
            return Err(InvalidPolicy::new(
                "targets",
                format!("at most {MAX_TARGETS} targets (got {})", r.targets.len()),
            )
            .within(&format!("route {}", quoted(&r.alias))));
        }
        Route::try_from(r)
    }
}

impl TryFrom<&pb::Route> for Route {
    type Error = InvalidPolicy;

    fn try_from(r: &pb::Route) -> Result<Self, InvalidPolicy> {
        let within = format!("route {}", quoted(&r.alias));
        validate_model_name("alias", &r.alias).map_err(|e| e.within(&within))?;
        let strategy = match pb::RouteStrategy::try_from(r.strategy) {
            Ok(pb::RouteStrategy::Unspecified | pb::RouteStrategy::Fallback) => Strategy::Fallback,
            Ok(pb::RouteStrategy::Weighted) => Strategy::Weighted,
            Err(_) => {
                return Err(
                    InvalidPolicy::new("strategy", format!("unknown strategy {}", r.strategy))
                        .within(&within),
                );
            }
        };
        if r.targets.is_empty() {
            return Err(InvalidPolicy::new("targets", "a route needs at least one target").within(&within));
        }
        let mut seen = HashSet::new();
        let mut targets = Vec::with_capacity(r.targets.len());
        for (i, t) in r.targets.iter().enumerate() {
            let at = format!("{within}/targets[{i}]");
            validate_provider_name(&t.provider)
                .map_err(|e| InvalidPolicy::new("provider", e.reason).within(&at))?;
            validate_model_name("model", &t.model).map_err(|e| e.within(&at))?;
            if t.weight > MAX_WEIGHT {
                return Err(
                    InvalidPolicy::new("weight", format!("must be at most {MAX_WEIGHT}")).within(&at),
                );
            }
            if !seen.insert((t.provider.as_str(), t.model.as_str())) {
                return Err(InvalidPolicy::new(
                    "targets",
                    format!("{}/{} is listed twice", t.provider, t.model),
                )
                .within(&within));
            }
            targets.push(Target {
                provider: t.provider.clone(),
                model: t.model.clone(),
                weight: t.weight.max(1),
            });
        }
        if r.cache_ttl_secs > MAX_CACHE_TTL_SECS {
            return Err(InvalidPolicy::new(
                "cache_ttl",
                format!("must be at most {MAX_CACHE_TTL_SECS} seconds"),
            )
            .within(&within));
        }
        Ok(Route {
            alias: r.alias.clone(),
            strategy,
            targets,
            cache_ttl_secs: r.cache_ttl_secs,
            retry_after_send: r.retry_after_send,
        })
    }
}

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> Self {
        pb::Route {
            alias: r.alias.clone(),
            strategy: r.strategy.to_wire() as i32,
            targets: r
                .targets
                .iter()
                .map(|t| pb::Target {
                    provider: t.provider.clone(),
                    model: t.model.clone(),
                    weight: t.weight,
                })
                .collect(),
            cache_ttl_secs: r.cache_ttl_secs,
            retry_after_send: r.retry_after_send,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use crate::model::test_support::snapshot;

    #[test]
    fn retry_after_send_is_off_unless_set_and_round_trips() {
        let s = Snapshot::try_from(&snapshot()).unwrap();
        assert!(!s.routes[0].retry_after_send, "off by default");
        let mut wire = snapshot();
        wire.routes[0].retry_after_send = true;
        let s = Snapshot::try_from(&wire).unwrap();
        assert!(s.routes[0].retry_after_send);
        assert!(pb::Snapshot::from(&s).routes[0].retry_after_send);
    }

    #[test]
    fn targets_parse_provider_and_model() {
        let t = Target::parse("vllm/meta-llama/Llama-3-8B").unwrap();
        assert_eq!(
            (t.provider.as_str(), t.model.as_str()),
            ("vllm", "meta-llama/Llama-3-8B")
        );
        assert!(Target::parse("no-slash").is_err());
        assert!(Target::parse("Bad/x").is_err());
        assert!(Target::parse("ok/").is_err());
    }
}
