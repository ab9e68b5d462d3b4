//! How a call goes to one target: relayed as is when caller and provider speak the same
//! format (the hot path: only `model` is rewritten), translated through the canonical model
//! otherwise, or not at all when the provider does not offer what was called.

use bytes::{Bytes, BytesMut};
use drover_proto::model::ProviderKind;

use crate::formats::ir::Dropped;
use crate::formats::json::{BodyError, ShallowBody, splice};
use crate::formats::tap::StreamKind;
use crate::formats::{Family, Ingress};
use crate::formats::{anthropic, gemini, openai};
use crate::policy::CompiledTarget;
use crate::providers::{Op, Upstream};
use crate::proxy::call::Call;

/// How the answer of a target is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Same format both ways: bytes are relayed as they come; `kind` tells how its stream ends.
    Passthrough { kind: StreamKind },
    /// The provider's format in, the caller's format out. `output_tool`: the caller's
    /// structured output travels as a tool call, turned back into text on the way out
    /// (`formats::structured`).
    Translate { provider: Family, output_tool: bool },
}

/// A request ready to send to one target.
pub struct Prepared<'a> {
    pub upstream: Upstream<'a>,
    pub body: Bytes,
    pub wire: Wire,
    /// What the target's format could not express.
    pub dropped: Dropped,
}

/// Why a target cannot take the call.
#[derive(Debug)]
pub enum Skip {
    /// The provider does not offer this endpoint (e.g. embeddings on Anthropic).
    Unsupported(String),
    /// Translation would drop these features and the caller asked for strict translation.
    Strict(Dropped),
    /// The body could not be read for translation.
    Invalid(BodyError),
}

fn translate(provider: Family) -> Wire {
    Wire::Translate {
        provider,
        output_tool: false,
    }
}

pub fn prepare<'a>(call: &'a Call<'a>, target: &'a CompiledTarget) -> Result<Prepared<'a>, Skip> {
    let provider = &target.provider;
    let family = provider.family;
    let (op, wire) = match (call.ingress, family) {
        (Ingress::ChatCompletions, Family::OpenAi) => (Op::Chat, pass(StreamKind::OpenAiChunks)),
        (Ingress::Completions, Family::OpenAi) => (Op::Completions, pass(StreamKind::OpenAiChunks)),
        (Ingress::Embeddings, Family::OpenAi) => (Op::Embeddings, pass(StreamKind::OpenAiChunks)),
        // Providers with a Responses endpoint of their own get the call untouched unless set to
        // translate; the others, and providers of other formats, get it translated through the
        // canonical model.
        (Ingress::Responses, Family::OpenAi)
            if provider.relays_responses && provider.offers(Op::Responses) =>
        {
            (Op::Responses, pass(StreamKind::Responses))
        }
        (Ingress::Responses, Family::OpenAi) => (Op::Chat, translate(family)),
        (Ingress::Responses, Family::Anthropic) => (Op::Messages, translate(family)),
        (Ingress::Responses, Family::Gemini) => (Op::Generate, translate(family)),
        (Ingress::Messages, Family::Anthropic) => (Op::Messages, pass(StreamKind::Anthropic)),
        (Ingress::CountTokens, Family::Anthropic) => (Op::CountTokens, pass(StreamKind::Anthropic)),
        (Ingress::ChatCompletions, Family::Anthropic) => (Op::Messages, translate(family)),
        (Ingress::Messages, Family::OpenAi) => (Op::Chat, translate(family)),
        (Ingress::ChatCompletions | Ingress::Messages, Family::Gemini) => (Op::Generate, translate(family)),
        (ingress, _) => {
            return Err(Skip::Unsupported(format!(
                "provider `{}` ({}) does not offer {}",
                provider.name,
                provider.kind,
                ingress_path(ingress)
            )));
        }
    };
    if !provider.offers(op) {
        return Err(Skip::Unsupported(format!(
            "provider `{}` ({}) does not offer {}",
            provider.name,
            provider.kind,
            ingress_path(call.ingress)
        )));
    }
    let mut dropped = Dropped::default();
    let mut wire = wire;
    let body = match wire {
        Wire::Passthrough { .. } => {
            let body = splice(call.body, call.model_span.clone(), &target.model_json);
            if call.stream && matches!(call.ingress, Ingress::ChatCompletions | Ingress::Completions) {
                // Every stream is metered: ask for the usage chunk (stripped again if the caller did not).
                with_stream_usage(&body, call.stream_usage).unwrap_or(body)
            } else {
                body
            }
        }
        Wire::Translate { provider, .. } => {
            let (req, decode_dropped) = call.canonical().map_err(Skip::Invalid)?;
            dropped = decode_dropped.clone();
            let (body, output_tool) = match provider {
                Family::OpenAi => {
                    let compatible = target.provider.kind == ProviderKind::OpenAiCompatible;
                    (
                        openai::encode_request(req, &target.model, compatible, &mut dropped),
                        false,
                    )
                }
                Family::Anthropic => anthropic::encode_request_for(req, &target.model, &mut dropped),
                Family::Gemini => (gemini::encode_request(req, &target.model, &mut dropped), false),
            };
            wire = Wire::Translate {
                provider,
                output_tool,
            };
            if call.ingress == Ingress::Responses {
                // A Responses caller asked for structured output in `text.format`.
                dropped.rename("response_format", "text.format");
            }
            body
        }
    };
    if call.strict && !dropped.is_empty() {
        return Err(Skip::Strict(dropped));
    }
    let same_format = matches!(wire, Wire::Passthrough { .. });
    Ok(Prepared {
        upstream: Upstream {
            op,
            model: &target.model,
            stream: call.stream,
            request_id: call.request_id,
            anthropic_version: same_format.then(|| call.header("anthropic-version")).flatten(),
            anthropic_beta: same_format.then(|| call.header("anthropic-beta")).flatten(),
        },
        body,
        wire,
        dropped,
    })
}

/// What a caller's body says about `stream_options.include_usage`, read once from the
/// shallow parse of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    /// No `stream_options` at all.
    Absent,
    /// `include_usage: true`: the caller wants the usage chunk.
    Wanted,
    /// `stream_options` without `include_usage: true`.
    NotWanted,
}

impl StreamUsage {
    pub fn of(parsed: &ShallowBody<'_>) -> Self {
        match parsed.get("stream_options") {
            None => StreamUsage::Absent,
            Some(raw) => {
                let wanted = serde_json::from_str::<serde_json::Value>(raw.get())
                    .is_ok_and(|v| v.get("include_usage") == Some(&serde_json::Value::Bool(true)));
                if wanted {
                    StreamUsage::Wanted
                } else {
                    StreamUsage::NotWanted
                }
            }
        }
    }
}

/// The body with `stream_options.include_usage` set to true; `None` if it already is (or
/// the body is not an object). Only a body that has other `stream_options` is parsed again.
pub fn with_stream_usage(body: &Bytes, usage: StreamUsage) -> Option<Bytes> {
    match usage {
        StreamUsage::Wanted => None,
        StreamUsage::Absent => {
            let open = body.iter().position(|&b| b == b'{')?;
            let mut out = BytesMut::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
            let rest = &body[open + 1..];
            if rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}') {
                out.extend_from_slice(b",");
            }
            out.extend_from_slice(rest);
            Some(out.freeze())
        }
        StreamUsage::NotWanted => {
            let parsed = ShallowBody::parse(body).ok()?;
            let raw = parsed.get("stream_options")?;
            let mut options: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(raw.get()).ok()?;
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let span = parsed.value_span(body, "stream_options")?;
            Some(splice(
                body,
                span,
                serde_json::Value::Object(options).to_string().as_bytes(),
            ))
        }
    }
}

fn pass(kind: StreamKind) -> Wire {
    Wire::Passthrough { kind }
}

pub fn ingress_path(ingress: Ingress) -> &'static str {
    match ingress {
        Ingress::ChatCompletions => "/v1/chat/completions",
        Ingress::Completions => "/v1/completions",
        Ingress::Embeddings => "/v1/embeddings",
        Ingress::Responses => "/v1/responses",
        Ingress::Messages => "/v1/messages",
        Ingress::CountTokens => "/v1/messages/count_tokens",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_is_asked_for_once() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"model":"m","stream":true}"#,
                Some(r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#),
            ),
            (r#"{}"#, Some(r#"{"stream_options":{"include_usage":true}}"#)),
            (
                r#"{"model":"m","stream_options":{"include_usage":false,"x":1}}"#,
                Some(r#"{"model":"m","stream_options":{"include_usage":true,"x":1}}"#),
            ),
            (r#"{"model":"m","stream_options":{"include_usage":true}}"#, None),
        ];
        for (input, want) in cases {
            let usage = StreamUsage::of(&ShallowBody::parse(input.as_bytes()).unwrap());
            let got = with_stream_usage(&Bytes::copy_from_slice(input.as_bytes()), usage);
            assert_eq!(
                got.as_deref().map(|b| std::str::from_utf8(b).unwrap()),
                *want,
                "{input}"
            );
        }
        let wants = |body: &[u8]| StreamUsage::of(&ShallowBody::parse(body).unwrap()) == StreamUsage::Wanted;
        assert!(wants(br#"{"stream_options":{"include_usage":true}}"#));
        assert!(!wants(br#"{"stream_options":{}}"#));
        assert!(!wants(br#"{"model":"m"}"#));
    }
}
