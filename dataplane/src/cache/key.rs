//! Cache keys: a SHA-256 over the tenant, the caller's endpoint, the alias and the
//! request body in a canonical form.
//!
//! The body is parsed fully and hashed as a tree: object keys in byte order, strings and
//! numbers as parsed, so neither spacing nor key order changes the key. At the top level
//! `stream` and `stream_options` are left out (a whole answer can be replayed as a stream
//! and back) and so is `model`: the alias it resolved to stands in for it. Every other
//! field is kept, whether or not it changes the output: a key may miss where it could have
//! hit, never the other way round.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::formats::Ingress;

/// Key of one cacheable request: tenant + caller format + alias + the normalized request.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CacheKey([u8; 32]);

/// Top-level fields that never reach the hash.
const IGNORED: [&str; 3] = ["stream", "stream_options", "model"];

/// Bumped whenever the canonical form changes, so old and new keys never meet.
const DOMAIN: &[u8] = b"drover.cache.key.v1\0";

/// Normalizes and hashes. The body is parsed fully; dropped before hashing: `stream`,
/// `stream_options`, and `model` (replaced by `alias`); object keys sorted; numbers/strings
/// as parsed (so spacing and key order do not matter). Returns None if the body is not a
/// JSON object, or if the ingress is not cacheable (only chat completions, messages,
/// completions and embeddings are).
pub fn key(tenant: &str, ingress: Ingress, alias: &str, body: &[u8]) -> Option<CacheKey> {
    let tag = ingress_tag(ingress)?;
    let Value::Object(fields) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let mut h = Sha256::new();
    h.update(DOMAIN);
    put_str(&mut h, tenant);
    h.update([tag]);
    put_str(&mut h, alias);
    put_object(&mut h, &fields, |name| !IGNORED.contains(&name));
    Some(CacheKey(h.finalize().into()))
}

/// One byte per cacheable endpoint; stable across versions (part of the key).
fn ingress_tag(ingress: Ingress) -> Option<u8> {
    match ingress {
        Ingress::ChatCompletions => Some(1),
        Ingress::Completions => Some(2),
        Ingress::Embeddings => Some(3),
        Ingress::Messages => Some(4),
        Ingress::Responses | Ingress::CountTokens => None,
    }
}

/// A length-prefixed string, so that no two sequences of fields hash alike.
fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// A value, each kind with its own tag. Depth is bounded by the JSON parser (128).
fn put_value(h: &mut Sha256, value: &Value) {
    match value {
        Value::Null => h.update(b"n"),
        Value::Bool(false) => h.update(b"f"),
        Value::Bool(true) => h.update(b"t"),
        Value::Number(n) => {
            h.update(b"#");
            put_str(h, &n.to_string());
        }
        Value::String(s) => {
            h.update(b"s");
            put_str(h, s);
        }
        Value::Array(items) => {
            h.update(b"[");
            h.update((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(h, item);
            }
        }
        Value::Object(fields) => put_object(h, fields, |_| true),
    }
}

/// An object's fields that `keep` accepts, in byte order of their names.
fn put_object(h: &mut Sha256, fields: &Map<String, Value>, keep: impl Fn(&str) -> bool) {
    let mut sorted: Vec<(&String, &Value)> = fields.iter().filter(|(k, _)| keep(k)).collect();
    sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    h.update(b"{");
    h.update((sorted.len() as u64).to_le_bytes());
    for (name, value) in sorted {
        put_str(h, name);
        put_value(h, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2}"#;

    fn chat(body: &str) -> CacheKey {
        key("t1", Ingress::ChatCompletions, "fast", body.as_bytes()).unwrap()
    }

    #[test]
    fn spacing_key_order_stream_and_model_do_not_matter() {
        let base = chat(CHAT);
        let same = [
            "{ \"messages\" : [ { \"content\" : \"Hi\", \"role\" : \"user\" } ],\n  \"temperature\": 0.2,\n \"model\": \"gpt-4o\" }",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,"stream":true}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}],"temperature":0.2}"#,
            r#"{"model":"fast","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,"stream":false}"#,
            r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.20}"#,
        ];
        for body in same {
            assert_eq!(chat(body), base, "{body}");
        }
    }

    #[test]
    fn tenant_format_alias_and_parameters_matter() {
        let base = chat(CHAT);
        let body = CHAT.as_bytes();
        let others = [
            key("t2", Ingress::ChatCompletions, "fast", body),
            key("", Ingress::ChatCompletions, "fast", body),
            key("t1", Ingress::Messages, "fast", body),
            key("t1", Ingress::Completions, "fast", body),
            key("t1", Ingress::ChatCompletions, "smart", body),
            // The tenant/alias boundary is not ambiguous.
            key("t1f", Ingress::ChatCompletions, "ast", body),
        ];
        for (i, other) in others.into_iter().enumerate() {
            assert_ne!(other.unwrap(), base, "case {i}");
        }
        let bodies = [
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.3}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi!"}],"temperature":0.2}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"Hi"}],"temperature":0.2}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"},{"role":"user","content":"Hi"}],"temperature":0.2}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,"max_tokens":5}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,"n":2}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":"0.2"}"#,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,"stop":null}"#,
        ];
        let mut seen = vec![base];
        for body in bodies {
            let k = chat(body);
            assert!(!seen.contains(&k), "{body}");
            seen.push(k);
        }
        // A nested `stream` or `model` is content, not a transport flag.
        let nested = chat(
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}],"temperature":0.2,"metadata":{"stream":true}}"#,
        );
        assert!(!seen.contains(&nested));
    }

    #[test]
    fn tools_differ_by_schema() {
        let with = |props: &str| {
            chat(&format!(
                r#"{{"messages":[{{"role":"user","content":"Hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"object","properties":{props}}}}}}}]}}"#
            ))
        };
        assert_ne!(
            with(r#"{"a":{"type":"string"}}"#),
            with(r#"{"a":{"type":"number"}}"#)
        );
        assert_eq!(
            with(r#"{"a":{"type":"string"},"b":{"type":"number"}}"#),
            with(r#"{"b":{"type":"number"},"a":{"type":"string"}}"#)
        );
    }

    #[test]
    fn only_objects_and_cacheable_endpoints_have_keys() {
        for body in ["[1,2]", "\"x\"", "{", "", "{\"a\":1} x"] {
            assert!(
                key("t", Ingress::ChatCompletions, "a", body.as_bytes()).is_none(),
                "{body}"
            );
        }
        for ingress in [Ingress::Responses, Ingress::CountTokens] {
            assert!(key("t", ingress, "a", CHAT.as_bytes()).is_none());
        }
        let embed = br#"{"model":"text-embedding-3-small","input":"hello"}"#;
        assert!(key("t", Ingress::Embeddings, "embed", embed).is_some());
        assert!(key("t", Ingress::Messages, "a", b"{}").is_some());
    }
}
