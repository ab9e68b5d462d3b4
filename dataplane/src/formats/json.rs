//! Format-neutral shallow JSON parsing for the hot path, and the text lengths the meter counts.
//!
//! A request body is parsed one level deep: top-level keys with their values kept raw
//! (borrowed slices of the input). Rewriting `model` splices the new value into the original
//! bytes, so nothing is deserialized or re-serialized deeply. Duplicate top-level keys are an
//! error, so the gateway and the provider can never disagree about which model was asked for.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Why a request body was refused; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    pub message: String,
    /// The offending top-level parameter, if one is to blame.
    pub param: Option<&'static str>,
}

impl BodyError {
    pub fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            param,
        }
    }
}

/// Above this many keys, duplicates are found with a set rather than a scan.
const LINEAR_SCAN_KEYS: usize = 16;

/// A JSON object parsed one level deep. Values borrow from the input.
#[derive(Debug)]
pub struct ShallowBody<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(12);
                let mut seen: Option<HashSet<Cow<'de, str>>> = None;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let duplicate = match &mut seen {
                        Some(set) => !set.insert(key.clone()),
                        None => {
                            let dup = entries.iter().any(|(k, _)| *k == key);
                            if entries.len() >= LINEAR_SCAN_KEYS {
                                let mut set: HashSet<Cow<'de, str>> =
                                    entries.iter().map(|(k, _)| k.clone()).collect();
                                set.insert(key.clone());
                                seen = Some(set);
                            }
                            dup
                        }
                    };
                    if duplicate {
                        return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(TopLevel(entries))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

impl<'a> ShallowBody<'a> {
    /// Parses the top level of a JSON object. Nested values are validated but kept raw.
    pub fn parse(input: &'a [u8]) -> Result<Self, BodyError> {
        let mut de = serde_json::Deserializer::from_slice(input);
        let top = <TopLevel<'a> as serde::Deserialize>::deserialize(&mut de)
            .and_then(|top| de.end().map(|()| top))
            .map_err(|e| {
                let msg = e.to_string();
                if msg.starts_with("duplicate key") {
                    BodyError::new(format!("request body has a {msg}"), None)
                } else {
                    BodyError::new(format!("request body is not a valid JSON object: {msg}"), None)
                }
            })?;
        Ok(ShallowBody { entries: top.0 })
    }

    /// Every top-level key with its raw value, in request order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// The raw value of a top-level key.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The `model` string.
    pub fn model(&self) -> Result<Cow<'a, str>, BodyError> {
        let raw = self
            .get("model")
            .ok_or_else(|| BodyError::new("you must provide a model parameter", Some("model")))?;
        let model: Cow<'a, str> = serde_json::from_str::<MaybeBorrowed<'a>>(raw.get())
            .map(|m| m.0)
            .map_err(|_| BodyError::new("model must be a string", Some("model")))?;
        if model.is_empty() {
            return Err(BodyError::new("model must not be empty", Some("model")));
        }
        Ok(model)
    }

    /// The `stream` flag; absent or null is false.
    pub fn stream(&self) -> Result<bool, BodyError> {
        match self.get("stream").map(RawValue::get) {
            None | Some("null") => Ok(false),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(BodyError::new("stream must be a boolean", Some("stream"))),
        }
    }

    /// Byte range of the value of `key` within `input`, which must be the slice this was parsed from.
    pub fn value_span(&self, input: &[u8], key: &str) -> Option<Range<usize>> {
        let raw = self.get(key)?.get().as_bytes();
        let start = (raw.as_ptr() as usize).checked_sub(input.as_ptr() as usize)?;
        let end = start.checked_add(raw.len())?;
        (input.get(start..end)? == raw).then_some(start..end)
    }
}

/// A JSON string that borrows from the input when it has no escapes.
struct MaybeBorrowed<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for MaybeBorrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Key::deserialize(d).map(|k| MaybeBorrowed(k.0))
    }
}

/// `input` with the bytes in `span` replaced by `value`.
pub fn splice(input: &[u8], span: Range<usize>, value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(input.len() - span.len() + value.len());
    out.put_slice(&input[..span.start]);
    out.put_slice(value);
    out.put_slice(&input[span.end..]);
    out.freeze()
}

/// Rewrites `model` in a body parsed by [`ShallowBody::parse`]. `model_json` is the new value, JSON-encoded.
pub fn rewrite_model(input: &[u8], body: &ShallowBody<'_>, model_json: &[u8]) -> Result<Bytes, BodyError> {
    let span = body
        .value_span(input, "model")
        .ok_or_else(|| BodyError::new("you must provide a model parameter", Some("model")))?;
    Ok(splice(input, span, model_json))
}

/// The length in bytes of a JSON string value once unescaped, read without allocating;
/// 0 for any other value (which is skipped). What the meter counts as text relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextLen(pub usize);

impl<'de> serde::Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LenVisitor;
        impl<'de> Visitor<'de> for LenVisitor {
            type Value = TextLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextLen, E> {
                Ok(TextLen(v.len()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_unit<E: de::Error>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_none<E: de::Error>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<TextLen, D2::Error> {
                <TextLen as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextLen, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TextLen(0))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextLen, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TextLen(0))
            }
        }
        d.deserialize_any(LenVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_top_level_and_keeps_values_raw() {
        let input = br#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let body = ShallowBody::parse(input).unwrap();
        assert_eq!(body.model().unwrap(), "gpt");
        assert!(body.stream().unwrap());
        assert_eq!(
            body.get("messages").unwrap().get(),
            r#"[{"role":"user","content":"hi"}]"#
        );
    }

    #[test]
    fn rewrites_model_without_touching_the_rest() {
        let input = br#"{ "messages" : [ {"a":1.50} ],"model" : "alias","x":"\u00e9"}"#;
        let body = ShallowBody::parse(input).unwrap();
        let out = rewrite_model(input, &body, br#""gpt-4o-mini""#).unwrap();
        assert_eq!(
            &out[..],
            br#"{ "messages" : [ {"a":1.50} ],"model" : "gpt-4o-mini","x":"\u00e9"}"#
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let input = br#"{"model":"a\/b"}"#;
        assert_eq!(ShallowBody::parse(input).unwrap().model().unwrap(), "a/b");
    }

    #[test]
    fn refuses_bad_bodies() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a valid JSON object"),
            (b"{", "not a valid JSON object"),
            (b"[1,2]", "not a valid JSON object"),
            (b"\"model\"", "not a valid JSON object"),
            (br#"{"model":"a"} x"#, "not a valid JSON object"),
            (br#"{"model":"a","messages":[1,}"#, "not a valid JSON object"),
            (br#"{"model":"a","model":"b"}"#, "duplicate key \"model\""),
            (br#"{"model":"a","m\u006fdel":"b"}"#, "duplicate key \"model\""),
        ];
        for (input, want) in cases {
            let err = ShallowBody::parse(input).unwrap_err();
            assert!(
                err.message.contains(want),
                "{:?}: {err:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn duplicates_found_among_many_keys() {
        let mut s = String::from("{");
        for i in 0..100 {
            s.push_str(&format!("\"k{i}\":{i},"));
        }
        s.push_str("\"k42\":0}");
        assert!(
            ShallowBody::parse(s.as_bytes())
                .unwrap_err()
                .message
                .contains("duplicate key \"k42\"")
        );
    }

    #[test]
    fn model_and_stream_types_are_checked() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"messages":[]}"#, "must provide a model"),
            (br#"{"model":5}"#, "model must be a string"),
            (br#"{"model":""}"#, "must not be empty"),
        ];
        for (input, want) in cases {
            let err = ShallowBody::parse(input).unwrap().model().unwrap_err();
            assert!(err.message.contains(want), "{err:?}");
            assert_eq!(err.param, Some("model"));
        }
        let body = ShallowBody::parse(br#"{"model":"m","stream":"yes"}"#).unwrap();
        assert_eq!(body.stream().unwrap_err().param, Some("stream"));
        assert!(
            !ShallowBody::parse(br#"{"model":"m","stream":null}"#)
                .unwrap()
                .stream()
                .unwrap()
        );
    }

    #[test]
    fn text_lengths_are_of_the_unescaped_string() {
        let len = |s: &str| serde_json::from_str::<TextLen>(s).unwrap().0;
        assert_eq!(len(r#""hello""#), 5);
        assert_eq!(len(r#""\u0068i\/""#), 3);
        assert_eq!(len(r#""é""#), 2);
        assert_eq!(len("null"), 0);
        assert_eq!(len(r#"{"a":["b",1]}"#), 0);
        assert_eq!(len("[1,2]"), 0);
    }
}
