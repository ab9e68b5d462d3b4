//! `drover price`: what each model costs, in USD per million tokens, for cost tracking and caps.
//! The control plane ships defaults for well-known models; `set` overrides one (or prices a
//! model on one provider only, with a `provider/model` key), `remove` drops the override.

use clap::{Args, Subcommand};
use drover_proto::model;
use drover_proto::pb;
use serde::Serialize;

use super::ListArgs;
use crate::client::{Client, GlobalArgs};
use crate::output::{self, Table, usd};

#[derive(Debug, Subcommand)]
pub enum PriceCommand {
    /// Set the price of a model (USD per million tokens), overriding its built-in default.
    Set(SetArgs),
    /// List prices (USD per million tokens): built-in defaults and custom prices, with their source.
    List(ListArgs),
    /// Remove the custom price of a model: its built-in default applies again; a model without
    /// one is then flagged as unpriced. Built-in defaults cannot be removed, only overridden.
    Remove {
        /// Model name, or PROVIDER/MODEL, as it was set.
        model: String,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Model name as the provider knows it, e.g. gpt-4o-mini; or PROVIDER/MODEL to price it on
    /// that provider only (looked up before the model alone).
    model: String,

    // Negative numbers are taken as values, so that `--input -1` is refused as a price and
    // not as an unknown option `-1`.
    /// USD per million input tokens.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    input: f64,

    /// USD per million output tokens.
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    output: f64,

    /// USD per million cached input tokens (default: the input price).
    #[arg(long, value_name = "USD", allow_negative_numbers = true)]
    cached_input: Option<f64>,
}

impl SetArgs {
    /// The price, checked with the control plane's own rules.
    fn to_price(&self) -> anyhow::Result<pb::Price> {
        let price = pb::Price {
            model: self.model.clone(),
            input_per_mtok: self.input,
            output_per_mtok: self.output,
            cached_input_per_mtok: self.cached_input,
            source: String::new(),
        };
        model::Price::try_from(&price)?;
        Ok(price)
    }
}

/// A price in `price list --json`, USD per million tokens.
#[derive(Debug, Serialize)]
pub struct PriceRow {
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// `null`: cached input costs the input price.
    pub cached_input_per_mtok: Option<f64>,
    /// `default` (built in) or `custom`.
    pub source: String,
}

impl From<pb::Price> for PriceRow {
    fn from(p: pb::Price) -> Self {
        PriceRow {
            model: p.model,
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
            source: p.source,
        }
    }
}

fn table(rows: &[PriceRow]) -> Table {
    let mut t = Table::new([
        "MODEL",
        "INPUT $/MTOK",
        "OUTPUT $/MTOK",
        "CACHED INPUT $/MTOK",
        "SOURCE",
    ]);
    for r in rows {
        t.row([
            r.model.clone(),
            usd(r.input_per_mtok),
            usd(r.output_per_mtok),
            r.cached_input_per_mtok.map_or_else(|| "-".to_owned(), usd),
            if r.source.is_empty() {
                "-".to_owned()
            } else {
                r.source.clone()
            },
        ]);
    }
    t
}

pub async fn run(command: PriceCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        PriceCommand::Set(args) => {
            let price = args.to_price()?;
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .set_price(pb::SetPriceRequest { price: Some(price) })
                .await
                .map_err(|s| client.error(s))?;
            output::print_change(&format!("price {} set", args.model), response.get_ref().version)
        }
        PriceCommand::List(list) => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .list_prices(pb::ListPricesRequest {})
                .await
                .map_err(|s| client.error(s))?;
            let rows: Vec<PriceRow> = response.into_inner().prices.into_iter().map(Into::into).collect();
            if list.json {
                output::print(&output::json(&rows)?)
            } else {
                output::print_table(&table(&rows), "no prices")
            }
        }
        PriceCommand::Remove { model } => {
            let mut client = Client::connect(global).await?;
            let response = client
                .admin
                .remove_price(pb::RemovePriceRequest { model: model.clone() })
                .await
                .map_err(|s| client.error(s))?;
            output::print_change(&format!("price {model} removed"), response.get_ref().version)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::tests::{parse, parse_err};

    fn set(args: &[&str]) -> SetArgs {
        let mut argv = vec!["drover", "price", "set"];
        argv.extend_from_slice(args);
        match parse(&argv).command {
            Command::Price(PriceCommand::Set(a)) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn set_price() {
        let p = set(&["gpt-4o", "--input", "2.5", "--output", "10"])
            .to_price()
            .unwrap();
        assert_eq!(
            (p.model.as_str(), p.input_per_mtok, p.output_per_mtok),
            ("gpt-4o", 2.5, 10.0)
        );
        assert_eq!(p.cached_input_per_mtok, None);
        let p = set(&[
            "gpt-4o",
            "--input",
            "2.5",
            "--output",
            "10",
            "--cached-input",
            "1.25",
        ])
        .to_price()
        .unwrap();
        assert_eq!(p.cached_input_per_mtok, Some(1.25));
    }

    #[test]
    fn bad_prices() {
        let err = set(&["m", "--input=-1", "--output", "1"])
            .to_price()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "price \"m\"/input: -1 is not a price; must be zero or more USD"
        );
        let err = set(&["m", "--input", "1", "--output", "-0.5"])
            .to_price()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "price \"m\"/output: -0.5 is not a price; must be zero or more USD"
        );
        let err = set(&["m", "--input", "1", "--output", "NaN"])
            .to_price()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a price"), "{err}");
        assert!(
            parse_err(&["drover", "price", "set", "m", "--input", "cheap", "--output", "1"])
                .contains("--input")
        );
        assert!(parse_err(&["drover", "price", "set", "m", "--input", "1"]).contains("--output"));
    }

    #[test]
    fn a_provider_prefix_must_be_a_provider_name() {
        let p = set(&[
            "groq/llama-3.3-70b-versatile",
            "--input",
            "0.5",
            "--output",
            "0.7",
        ])
        .to_price()
        .unwrap();
        assert_eq!(p.model, "groq/llama-3.3-70b-versatile");
        let err = set(&["Qwen/Qwen2.5-7B", "--input", "1", "--output", "1"])
            .to_price()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names a provider") && err.contains("vllm/Qwen/Qwen2.5-7B"),
            "{err}"
        );
    }

    #[test]
    fn list_and_remove_parse() {
        assert!(matches!(
            parse(&["drover", "price", "list", "--json"]).command,
            Command::Price(PriceCommand::List(ListArgs { json: true }))
        ));
        match parse(&["drover", "price", "remove", "gpt-4o"]).command {
            Command::Price(PriceCommand::Remove { model }) => assert_eq!(model, "gpt-4o"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_output() {
        let rows: Vec<PriceRow> = vec![
            pb::Price {
                model: "gpt-4o".into(),
                input_per_mtok: 2.5,
                output_per_mtok: 10.0,
                cached_input_per_mtok: Some(1.25),
                source: "default".into(),
            }
            .into(),
            pb::Price {
                model: "groq/gpt-4o-mini".into(),
                input_per_mtok: 0.15,
                output_per_mtok: 0.6,
                cached_input_per_mtok: None,
                source: "custom".into(),
            }
            .into(),
        ];
        assert_eq!(
            table(&rows).render(),
            "MODEL             INPUT $/MTOK  OUTPUT $/MTOK  CACHED INPUT $/MTOK  SOURCE\n\
             gpt-4o            2.5           10             1.25                 default\n\
             groq/gpt-4o-mini  0.15          0.6            -                    custom\n"
        );
        let json: serde_json::Value = serde_json::from_str(&output::json(&rows).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"model": "gpt-4o", "input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25, "source": "default"},
                {"model": "groq/gpt-4o-mini", "input_per_mtok": 0.15, "output_per_mtok": 0.6, "cached_input_per_mtok": null, "source": "custom"},
            ])
        );
    }
}
