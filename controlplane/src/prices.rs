//! The built-in price table: what well-known models cost when no custom price is set.
//!
//! Prices are USD per million tokens (input, output, cached input), as the providers publish them
//! for standard (non-batch, short-context) requests. They were taken on [`TAKEN`]; providers
//! change their prices, so an operator overrides any of them at runtime with `drover price set`
//! (a custom price wins over the default of the same key) and adds models that are missing.
//!
//! Keys are model names as the providers' APIs know them, without a provider prefix, so the
//! default applies whatever a provider is called in Drover. Where a provider publishes no
//! cached-input price, the entry has none and cached input costs the input price.
//!
//! What this module does not do: store anything. Custom prices live in the `prices` table
//! (`store::prices`); the published snapshot is [`merge`] of both.

use std::collections::BTreeMap;

use drover_proto::model::Price;

/// When the table below was taken from the providers' published price lists.
pub const TAKEN: &str = "2026-11-25";

/// `(model, input, output, cached input)`, USD per million tokens.
const DEFAULTS: &[(&str, f64, f64, Option<f64>)] = &[
    // OpenAI (platform.openai.com pricing, standard tier).
    ("gpt-5", 1.25, 10.0, Some(0.125)),
    ("gpt-5-mini", 0.25, 2.0, Some(0.025)),
    ("gpt-5-nano", 0.05, 0.40, Some(0.005)),
    ("gpt-4.1", 2.0, 8.0, Some(0.50)),
    ("gpt-4.1-mini", 0.40, 1.60, Some(0.10)),
    ("gpt-4.1-nano", 0.10, 0.40, Some(0.025)),
    ("gpt-4o", 2.50, 10.0, Some(1.25)),
    ("gpt-4o-2024-08-06", 2.50, 10.0, Some(1.25)),
    ("gpt-4o-mini", 0.15, 0.60, Some(0.075)),
    ("gpt-4o-mini-2024-07-18", 0.15, 0.60, Some(0.075)),
    ("o3", 2.0, 8.0, Some(0.50)),
    ("o4-mini", 1.10, 4.40, Some(0.275)),
    ("o3-mini", 1.10, 4.40, Some(0.55)),
    ("o1", 15.0, 60.0, Some(7.50)),
    ("text-embedding-3-small", 0.02, 0.0, None),
    ("text-embedding-3-large", 0.13, 0.0, None),
    ("text-embedding-ada-002", 0.10, 0.0, None),
    // Anthropic (docs.anthropic.com pricing; cached input = cache hits and refreshes). Aliases
    // and the dated ids the API reports.
    ("claude-opus-4-5", 5.0, 25.0, Some(0.50)),
    ("claude-opus-4-5-20251101", 5.0, 25.0, Some(0.50)),
    ("claude-opus-4-1", 15.0, 75.0, Some(1.50)),
    ("claude-opus-4-1-20250805", 15.0, 75.0, Some(1.50)),
    ("claude-opus-4-0", 15.0, 75.0, Some(1.50)),
    ("claude-opus-4-20250514", 15.0, 75.0, Some(1.50)),
    ("claude-sonnet-4-5", 3.0, 15.0, Some(0.30)),
    ("claude-sonnet-4-5-20250929", 3.0, 15.0, Some(0.30)),
    ("claude-sonnet-4-0", 3.0, 15.0, Some(0.30)),
    ("claude-sonnet-4-20250514", 3.0, 15.0, Some(0.30)),
    ("claude-3-7-sonnet-latest", 3.0, 15.0, Some(0.30)),
    ("claude-3-7-sonnet-20250219", 3.0, 15.0, Some(0.30)),
    ("claude-haiku-4-5", 1.0, 5.0, Some(0.10)),
    ("claude-haiku-4-5-20251001", 1.0, 5.0, Some(0.10)),
    ("claude-3-5-haiku-latest", 0.80, 4.0, Some(0.08)),
    ("claude-3-5-haiku-20241022", 0.80, 4.0, Some(0.08)),
    ("claude-3-haiku-20240307", 0.25, 1.25, Some(0.03)),
    // Google Gemini API (ai.google.dev pricing, paid tier, prompts up to 200k tokens; cached
    // input = context caching).
    ("gemini-2.5-pro", 1.25, 10.0, Some(0.125)),
    ("gemini-2.5-flash", 0.30, 2.50, Some(0.03)),
    ("gemini-2.5-flash-lite", 0.10, 0.40, Some(0.01)),
    ("gemini-2.0-flash", 0.10, 0.40, Some(0.025)),
    ("gemini-2.0-flash-lite", 0.075, 0.30, None),
    // Groq.
    ("llama-3.3-70b-versatile", 0.59, 0.79, None),
    ("llama-3.1-8b-instant", 0.05, 0.08, None),
    // Mistral (La Plateforme).
    ("mistral-large-latest", 0.50, 1.50, None),
    ("mistral-medium-latest", 0.40, 2.0, None),
    ("mistral-small-latest", 0.10, 0.30, None),
    ("codestral-latest", 0.30, 0.90, None),
    // DeepSeek (cached input = cache hit).
    ("deepseek-chat", 0.28, 0.42, Some(0.028)),
    ("deepseek-reasoner", 0.28, 0.42, Some(0.028)),
];

/// Where a price in the merged table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    /// The built-in table above.
    Default,
    /// Set through the admin API (stored in the database).
    Custom,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Default => "default",
            PriceSource::Custom => "custom",
        }
    }
}

/// Every built-in price.
pub fn defaults() -> impl Iterator<Item = Price> {
    DEFAULTS.iter().map(|&(model, input, output, cached)| Price {
        model: model.to_owned(),
        input_per_mtok: input,
        output_per_mtok: output,
        cached_input_per_mtok: cached,
    })
}

/// Whether `key` has a built-in price.
pub fn has_default(key: &str) -> bool {
    DEFAULTS.iter().any(|(model, ..)| *model == key)
}

/// The defaults merged with `custom` (a custom price replaces the default of the same key),
/// sorted by key.
pub fn merge(custom: Vec<Price>) -> Vec<(Price, PriceSource)> {
    let mut table: BTreeMap<String, (Price, PriceSource)> = defaults()
        .map(|p| (p.model.clone(), (p, PriceSource::Default)))
        .collect();
    for p in custom {
        table.insert(p.model.clone(), (p, PriceSource::Custom));
    }
    table.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use drover_proto::model::{Snapshot, UtcDay};
    use drover_proto::pb;

    use super::*;

    #[test]
    fn every_default_is_a_valid_price_once() {
        let mut seen = HashSet::new();
        for price in defaults() {
            let wire = pb::Price::from(&price);
            assert_eq!(Price::try_from(&wire).as_ref(), Ok(&price), "{}", price.model);
            assert!(seen.insert(price.model.clone()), "{} listed twice", price.model);
            if let Some(cached) = price.cached_input_per_mtok {
                assert!(cached <= price.input_per_mtok, "{}", price.model);
            }
        }
        // The merged table is a valid snapshot price list.
        let snapshot = pb::Snapshot {
            store_id: "s".into(),
            version: 1,
            prices: merge(vec![]).iter().map(|(p, _)| pb::Price::from(p)).collect(),
            ..Default::default()
        };
        assert_eq!(
            Snapshot::try_from(&snapshot).unwrap().prices.len(),
            DEFAULTS.len()
        );
        assert!(UtcDay::parse(TAKEN).is_some());
    }

    #[test]
    fn the_current_models_of_each_provider_are_priced() {
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o3",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "claude-opus-4-1",
            "claude-sonnet-4-5",
            "claude-sonnet-4-0",
            "claude-haiku-4-5",
            "claude-3-5-haiku-latest",
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "gemini-2.5-flash-lite",
            "gemini-2.0-flash",
            "llama-3.3-70b-versatile",
            "llama-3.1-8b-instant",
            "mistral-large-latest",
            "mistral-small-latest",
            "deepseek-chat",
            "deepseek-reasoner",
        ] {
            assert!(has_default(model), "{model}");
        }
        assert!(!has_default("no-such-model"));
    }

    #[test]
    fn custom_prices_win_and_are_marked() {
        let custom = vec![
            Price {
                model: "gpt-4o".into(),
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
                cached_input_per_mtok: None,
            },
            Price {
                model: "groq/llama-3.3-70b-versatile".into(),
                input_per_mtok: 0.5,
                output_per_mtok: 0.5,
                cached_input_per_mtok: None,
            },
        ];
        let merged = merge(custom.clone());
        assert_eq!(merged.len(), DEFAULTS.len() + 1);
        let find = |key: &str| merged.iter().find(|(p, _)| p.model == key).cloned();
        assert_eq!(find("gpt-4o"), Some((custom[0].clone(), PriceSource::Custom)));
        assert_eq!(
            find("groq/llama-3.3-70b-versatile"),
            Some((custom[1].clone(), PriceSource::Custom))
        );
        let (default, source) = find("llama-3.3-70b-versatile").unwrap();
        assert_eq!((default.input_per_mtok, source), (0.59, PriceSource::Default));
        let keys: Vec<_> = merged.iter().map(|(p, _)| p.model.as_str()).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }
}
