//! Prices of models, USD per million tokens, and the keys they are looked up by.

use super::error::head;
use super::{
    InvalidPolicy, MAX_QUOTED_CHARS, MAX_REQUEST_MODEL_LEN, quoted, validate_model_name, validate_name,
    validate_provider_name,
};
use crate::pb;

/// Longest price key accepted, bytes (`provider/model` at its longest).
pub const MAX_PRICE_KEY_LEN: usize = MAX_REQUEST_MODEL_LEN;
/// Largest price accepted, USD per million tokens.
pub const MAX_PRICE_PER_MTOK: f64 = 1_000_000.0;

/// Price of a model, USD per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// `None`: cached input costs the input price.
    pub cached_input_per_mtok: Option<f64>,
}

fn validate_price(field: &str, value: f64) -> Result<(), InvalidPolicy> {
    if !value.is_finite() || value < 0.0 {
        return Err(InvalidPolicy::new(
            field,
            format!("{value} is not a price; must be zero or more USD"),
        ));
    }
    if value > MAX_PRICE_PER_MTOK {
        return Err(InvalidPolicy::new(
            field,
            format!("{value} exceeds {MAX_PRICE_PER_MTOK} USD per million tokens"),
        ));
    }
    Ok(())
}

/// Checks a price key: a model name, or `provider/model` where the part before the first `/`
/// is a valid provider name (the data plane looks up `provider/model` first, then `model`).
pub fn validate_price_key(key: &str) -> Result<(), InvalidPolicy> {
    validate_name("model", key, MAX_PRICE_KEY_LEN)?;
    match key.split_once('/') {
        Some((provider, model)) => {
            if validate_provider_name(provider).is_err() {
                return Err(InvalidPolicy::new(
                    "model",
                    format!(
                        "{}: before the '/', a price key names a provider (1-64 of a-z, 0-9, '-' and '_', \
                         starting with a letter); to price a model whose name has a '/', prefix it with its \
                         provider, e.g. vllm/{}",
                        quoted(key),
                        head(key, MAX_QUOTED_CHARS)
                    ),
                ));
            }
            if model.is_empty() {
                return Err(InvalidPolicy::new(
                    "model",
                    format!("{}: a model name must follow the '/'", quoted(key)),
                ));
            }
            validate_model_name("model", model)
        }
        None => validate_model_name("model", key),
    }
}

impl TryFrom<&pb::Price> for Price {
    type Error = InvalidPolicy;

    fn try_from(p: &pb::Price) -> Result<Self, InvalidPolicy> {
        let within = format!("price {}", quoted(&p.model));
        validate_price_key(&p.model).map_err(|e| e.within(&within))?;
        validate_price("input", p.input_per_mtok).map_err(|e| e.within(&within))?;
        validate_price("output", p.output_per_mtok).map_err(|e| e.within(&within))?;
        if let Some(c) = p.cached_input_per_mtok {
            validate_price("cached_input", c).map_err(|e| e.within(&within))?;
        }
        Ok(Price {
            model: p.model.clone(),
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
        })
    }
}

impl From<&Price> for pb::Price {
    fn from(p: &Price) -> Self {
        pb::Price {
            model: p.model.clone(),
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
            source: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_keys_are_models_or_provider_slash_model() {
        for good in [
            "gpt-4o",
            "groq/llama-3.3-70b-versatile",
            "vllm/Qwen/Qwen2.5-7B",
            "meta-llama/Llama-3-8B",
        ] {
            assert_eq!(validate_price_key(good), Ok(()), "{good}");
        }
        for (bad, want) in [
            ("Qwen/Qwen2.5-7B", "names a provider"),
            ("/gpt-4o", "names a provider"),
            ("groq/", "must follow"),
            ("", "must not be empty"),
            ("gpt 4o", "whitespace"),
        ] {
            let err = validate_price_key(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        let err = Price::try_from(&pb::Price {
            model: "Qwen/Qwen2.5-7B".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("vllm/Qwen/Qwen2.5-7B"), "{err}");
    }
}
