//! `drover route`: public model names (aliases) and the provider models they send to.

use anyhow::bail;
use clap::{Args, Subcommand};
use drover_proto::model::{self, MAX_WEIGHT, Strategy, Target};
use drover_proto::pb;
use serde::Serialize;

use super::ListArgs;
use crate::client::{Client, GlobalArgs};
use crate::output::{self, Table};

const TARGET_HELP: &str = "\
Targets are PROVIDER/MODEL, optionally followed by =WEIGHT (a whole number, 1 to 1000000, default 1).
Give --target once per target or separate targets with commas. The model may contain '/';
a model whose name contains '=' needs an explicit weight (openai/a=b=1).

  drover route set fast --target openai/gpt-4o-mini --target anthropic/claude-3-5-haiku-latest
  drover route set chat --target openai/gpt-4o=3,azure/gpt-4o=1      # weighted, 3:1
  drover route set llama --target vllm/meta-llama/Llama-3.1-8B-Instruct";

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Create or replace a route: a model name callers use and the targets it goes to.
    Set(SetArgs),
    /// List routes.
    List(ListArgs),
    /// Remove a route.
    Remove {
        /// The route's alias.
        alias: String,
    },
}

#[derive(Debug, Args)]
#[command(after_help = TARGET_HELP)]
pub struct SetArgs {
    /// The model name callers send, e.g. `fast` or `gpt-4o`.
    alias: String,

    /// PROVIDER/MODEL[=WEIGHT]; repeatable, or comma-separated. Order is the fallback order.
    #[arg(
        long = "target",
        required = true,
        value_delimiter = ',',
        value_name = "PROVIDER/MODEL[=WEIGHT]",
        value_parser = parse_target
    )]
    targets: Vec<WeightedTarget>,

    /// fallback: in order, the next on failure. weighted: picked at random by weight.
    /// Default: weighted when a target has a =WEIGHT, fallback otherwise.
    #[arg(long, value_name = "fallback|weighted", value_parser = parse_strategy)]
    strategy: Option<Strategy>,

    /// Cache successful answers of this route for SECONDS (0, the default: no cache).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    cache_ttl: u32,

    /// Also retry (and fail over) when the connection broke after the request reached the
    /// provider. Off by default: the provider may have done, and billed, the work already.
    #[arg(long)]
    retry_after_send: bool,
}

/// A target as given on the command line, with its weight if one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTarget {
    target: Target,
    weight: Option<u32>,
}

fn parse_target(spec: &str) -> Result<WeightedTarget, String> {
    let spec = spec.trim();
    let (target, weight) = match spec.rsplit_once('=') {
        None => (spec, None),
        Some((target, weight)) => match weight.parse::<u32>() {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) && weight.bytes().all(|b| b.is_ascii_digit()) => {
                (target, Some(w))
            }
            _ => {
                return Err(format!(
                    "weight {} in {} must be a whole number from 1 to {MAX_WEIGHT}",
                    model::quoted(weight),
                    model::quoted(spec)
                ));
            }
        },
    };
    let target = Target::parse(target).map_err(|e| e.reason)?;
    Ok(WeightedTarget { target, weight })
}

fn parse_strategy(raw: &str) -> Result<Strategy, String> {
    Strategy::parse(raw).map_err(|e| e.reason)
}

impl SetArgs {
    /// The route, checked with the control plane's own rules.
    fn to_route(&self) -> anyhow::Result<pb::Route> {
        let weighted = self.targets.iter().any(|t| t.weight.is_some());
        let strategy = match self.strategy {
            Some(Strategy::Fallback) if weighted => {
                bail!("target weights (PROVIDER/MODEL=N) apply only to --strategy weighted")
            }
            Some(s) => s,
            None if weighted => Strategy::Weighted,
            None => Strategy::Fallback,
        };
        let route = pb::Route {
            alias: self.alias.clone(),
            strategy: strategy.to_wire() as i32,
            targets: self
                .targets
                .iter()
                .map(|t| pb::Target {
                    provider: t.target.provider.clone(),
                    model: t.target.model.clone(),
                    weight: t.weight.unwrap_or(1),
                })
                .collect(),
            cache_ttl_secs: self.cache_ttl,
            retry_after_send: self.retry_after_send,
        };
        model::Route::from_admin(&route)?;
        Ok(route)
    }
}

/// A route in `route list --json`.
#[derive(Debug, Serialize)]
pub struct RouteRow {
    pub alias: String,
    /// `fallback` or `weighted`.
    pub strategy: String,
    pub targets: Vec<TargetRow>,
    /// Response cache TTL in seconds; 0: not cached.
    pub cache_ttl_secs: u32,
    /// Whether attempts that broke after the request was sent are retried.
    pub retry_after_send: bool,
}

#[derive(Debug, Serialize)]
pub struct TargetRow {
    pub provider: String,
    pub model: String,
    /// At least 1; only meaningful for `weighted`.
    pub weight: u32,
}

impl From<pb::Route> for RouteRow {
    fn from(r: pb::Route) -> Self {
        let strategy = match pb::RouteStrategy::try_from(r.strategy) {
            Ok(pb::RouteStrategy::Weighted) => Strategy::Weighted.as_str().to_owned(),
            Ok(pb::RouteStrategy::Fallback | pb::RouteStrategy::Unspecified) => {
                Strategy::Fallback.as_str().to_owned()
            }
            Err(_) => format!("unknown ({})", r.strategy),
        };
        RouteRow {
            alias: r.alias,
            strategy,
            cache_ttl_secs: r.cache_ttl_secs,
            retry_after_send: r.retry_after_send,
            targets: r
                .targets
                .into_iter()
                .map(|t| TargetRow {
                    provider: t.provider,
                    model: t.model,
                    weight: t.weight.max(1),
                })
                .collect(),
        }
    }
}

impl RouteRow {
    /// `openai/gpt-4o, anthropic/claude` or, for weighted routes, `openai/gpt-4o=3, azure/gpt-4o=1`.
    fn targets_text(&self) -> String {
        let weighted = self.strategy == Strategy::Weighted.as_str();
        self.targets
            .iter()
            .map(|t| {
                if weighted {
                    format!("{}/{}={}", t.provider, t.model, t.weight)
                } else {
                    format!("{}/{}", t.provider, t.model)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn table(rows: &[RouteRow]) -> Table {
    let mut t = Table::new(["ALIAS", "STRATEGY", "TARGETS", "CACHE TTL", "RETRY AFTER SEND"]);
    for r in rows {
        let ttl = if r.cache_ttl_secs == 0 {
            "-".to_owned()
        } else {
            format!("{}s", r.cache_ttl_secs)
        };
        let retry = if r.retry_after_send { "yes" } else { "no" };
        t.row([
            r.alias.clone(),
            r.strategy.clone(),
            r.targets_text(),
            ttl,
            retry.to_owned(),
        ]);
    }
    t
}

pub async fn run(command: RouteCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        RouteCommand::Set(args) => {
            let route = args.to_route()?;
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .set_route(pb::SetRouteRequest {
                    route: Some(route.clone()),
                })
                .await
                .map_err(|s| client.error(s))?
                .into_inner();
            let row = RouteRow::from(response.route.unwrap_or(route));
            let retry = if row.retry_after_send {
                " (retry after send)"
            } else {
                ""
            };
            output::print_change(
                &format!(
                    "route {} set, {}: {}{retry}",
                    row.alias,
                    row.strategy,
                    row.targets_text()
                ),
                response.version,
            )
        }
        RouteCommand::List(list) => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .list_routes(pb::ListRoutesRequest {})
                .await
                .map_err(|s| client.error(s))?;
            let rows: Vec<RouteRow> = response.into_inner().routes.into_iter().map(Into::into).collect();
            if list.json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no routes")
            }
        }
        RouteCommand::Remove { alias } => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .remove_route(pb::RemoveRouteRequest { alias: alias.clone() })
                .await
                .map_err(|s| client.error(s))?;
            output::print_change(&format!("route {alias} removed"), response.get_ref().version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    fn set(args: &[&str]) -> SetArgs {
        let mut argv = vec!["drover", "route", "set"];
        argv.extend_from_slice(args);
        match parse(&argv).command {
            Command::Route(RouteCommand::Set(a)) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn targets(route: &pb::Route) -> Vec<(String, String, u32)> {
        route
            .targets
            .iter()
            .map(|t| (t.provider.clone(), t.model.clone(), t.weight))
            .collect()
    }

    #[test]
    fn fallback_targets_in_order() {
        let route = set(&[
            "fast",
            "--target",
            "openai/gpt-4o-mini",
            "--target",
            "anthropic/claude-3-5-haiku",
        ])
        .to_route()
        .unwrap();
        assert_eq!(route.alias, "fast");
        assert_eq!(route.strategy, pb::RouteStrategy::Fallback as i32);
        assert_eq!(
            targets(&route),
            [
                ("openai".into(), "gpt-4o-mini".into(), 1),
                ("anthropic".into(), "claude-3-5-haiku".into(), 1)
            ]
        );
    }

    #[test]
    fn comma_separated_and_weighted_targets() {
        let route = set(&[
            "chat",
            "--target",
            "openai/gpt-4o=3,azure/gpt-4o",
            "--target",
            "vllm/meta/llama=2",
        ])
        .to_route()
        .unwrap();
        assert_eq!(
            route.strategy,
            pb::RouteStrategy::Weighted as i32,
            "weights imply weighted"
        );
        assert_eq!(
            targets(&route),
            [
                ("openai".into(), "gpt-4o".into(), 3),
                ("azure".into(), "gpt-4o".into(), 1),
                ("vllm".into(), "meta/llama".into(), 2)
            ]
        );
    }

    #[test]
    fn explicit_strategy() {
        let route = set(&[
            "r",
            "--target",
            "a/x",
            "--target",
            "b/y",
            "--strategy",
            "weighted",
        ])
        .to_route()
        .unwrap();
        assert_eq!(route.strategy, pb::RouteStrategy::Weighted as i32);
        assert_eq!(route.targets[1].weight, 1);
        let route = set(&["r", "--target", "a/x", "--strategy", "fallback"])
            .to_route()
            .unwrap();
        assert_eq!(route.strategy, pb::RouteStrategy::Fallback as i32);
        let err = set(&["r", "--target", "a/x=2", "--strategy", "fallback"])
            .to_route()
            .unwrap_err();
        assert!(
            err.to_string().contains("apply only to --strategy weighted"),
            "{err}"
        );
    }

    #[test]
    fn model_with_equals_needs_a_weight() {
        let route = set(&["r", "--target", "a/x=y=5"]).to_route().unwrap();
        assert_eq!(targets(&route), [("a".into(), "x=y".into(), 5)]);
        let err = parse_err(&["drover", "route", "set", "r", "--target", "a/x=y"]);
        assert!(err.contains("must be a whole number from 1 to 1000000"), "{err}");
    }

    #[test]
    fn bad_targets_are_usage_errors() {
        for (target, want) in [
            ("no-slash", "\"no-slash\" must be PROVIDER/MODEL"),
            ("Bad/x", "must be 1-64 of a-z"),
            ("ok/", "must not be empty"),
            ("a/x=0", "must be a whole number from 1 to 1000000"),
            ("a/x=1000001", "must be a whole number from 1 to 1000000"),
            ("a/x=-1", "must be a whole number from 1 to 1000000"),
            ("a/x=+3", "must be a whole number from 1 to 1000000"),
            ("a/x=", "must be a whole number from 1 to 1000000"),
        ] {
            let err = parse_err(&["drover", "route", "set", "r", "--target", target]);
            assert!(err.contains(want), "{target}: {err}");
        }
        let err = parse_err(&[
            "drover",
            "route",
            "set",
            "r",
            "--target",
            "a/x",
            "--strategy",
            "random",
        ]);
        assert!(
            err.contains("unknown strategy \"random\"; expected fallback or weighted"),
            "{err}"
        );
        assert!(parse_err(&["drover", "route", "set", "r"]).contains("--target"));
    }

    #[test]
    fn duplicate_targets_are_refused_before_sending() {
        let err = set(&["r", "--target", "a/x,a/x"])
            .to_route()
            .unwrap_err()
            .to_string();
        assert_eq!(err, "route \"r\"/targets: a/x is listed twice");
    }

    #[test]
    fn retry_after_send_is_off_unless_asked() {
        assert!(
            !set(&["r", "--target", "a/x"])
                .to_route()
                .unwrap()
                .retry_after_send
        );
        let route = set(&["r", "--target", "a/x", "--retry-after-send"])
            .to_route()
            .unwrap();
        assert!(route.retry_after_send);
    }

    #[test]
    fn list_and_remove_parse() {
        assert!(matches!(
            parse(&["drover", "route", "list"]).command,
            Command::Route(RouteCommand::List(ListArgs { json: false }))
        ));
        match parse(&["drover", "route", "remove", "fast"]).command {
            Command::Route(RouteCommand::Remove { alias }) => assert_eq!(alias, "fast"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_output() {
        let route = |alias: &str, strategy: pb::RouteStrategy, targets: &[(&str, &str, u32)]| {
            RouteRow::from(pb::Route {
                retry_after_send: strategy == pb::RouteStrategy::Weighted,
                alias: alias.into(),
                strategy: strategy as i32,
                targets: targets
                    .iter()
                    .map(|(p, m, w)| pb::Target {
                        provider: (*p).into(),
                        model: (*m).into(),
                        weight: *w,
                    })
                    .collect(),
                cache_ttl_secs: 0,
            })
        };
        let rows = vec![
            route(
                "fast",
                pb::RouteStrategy::Unspecified,
                &[("openai", "gpt-4o-mini", 0), ("groq", "llama", 0)],
            ),
            route(
                "chat",
                pb::RouteStrategy::Weighted,
                &[("openai", "gpt-4o", 3), ("azure", "gpt-4o", 0)],
            ),
        ];
        assert_eq!(
            table(&rows).render(),
            "ALIAS  STRATEGY  TARGETS                          CACHE TTL  RETRY AFTER SEND\n\
             fast   fallback  openai/gpt-4o-mini, groq/llama   -          no\n\
             chat   weighted  openai/gpt-4o=3, azure/gpt-4o=1  -          yes\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(
            json[1],
            serde_json::json!({
                "alias": "chat",
                "strategy": "weighted",
                "targets": [
                    {"provider": "openai", "model": "gpt-4o", "weight": 3},
                    {"provider": "azure", "model": "gpt-4o", "weight": 1},
                ],
                "cache_ttl_secs": 0,
                "retry_after_send": true,
            })
        );
        assert_eq!(json[0]["retry_after_send"], false);
    }
}
