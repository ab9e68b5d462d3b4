//! One caller request, as every later phase sees it: what was called (the ingress), its
//! body parsed shallowly, and — decoded at most once, only when a target needs another
//! format — its canonical form.

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::formats::ir::{ChatRequest, Dropped};
use crate::formats::json::BodyError;
use crate::formats::{ApiFormat, Ingress, anthropic, openai, responses};
use crate::proxy::plan::StreamUsage;

/// A request on its way through the phases.
pub struct Call<'a> {
    pub ingress: Ingress,
    pub body: &'a Bytes,
    /// Where the `model` value sits in `body`.
    pub model_span: Range<usize>,
    pub stream: bool,
    pub request_id: &'a HeaderValue,
    pub headers: &'a HeaderMap,
    /// The caller asked that nothing be dropped in translation (`x-drover-strict: true`).
    pub strict: bool,
    /// What the body says about the usage chunk of an OpenAI stream.
    pub stream_usage: StreamUsage,
    canonical: OnceLock<Result<(ChatRequest, Dropped), BodyError>>,
}

impl<'a> Call<'a> {
    pub fn new(
        ingress: Ingress,
        body: &'a Bytes,
        model_span: Range<usize>,
        stream: bool,
        request_id: &'a HeaderValue,
        headers: &'a HeaderMap,
        stream_usage: StreamUsage,
    ) -> Self {
        let strict = headers
            .get("x-drover-strict")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        Call {
            ingress,
            body,
            model_span,
            stream,
            request_id,
            headers,
            strict,
            stream_usage,
            canonical: OnceLock::new(),
        }
    }

    /// The request in canonical form, decoded on first use, with what decoding could not
    /// carry over.
    pub fn canonical(&self) -> Result<(&ChatRequest, &Dropped), BodyError> {
        self.canonical
            .get_or_init(|| match self.ingress.format() {
                ApiFormat::OpenAi if self.ingress == Ingress::Responses => {
                    let mut dropped = Dropped::default();
                    responses::decode_request(self.body, &mut dropped).map(|r| (r, dropped))
                }
                ApiFormat::OpenAi => {
                    let mut dropped = Dropped::default();
                    openai::decode_request_reporting(self.body, &mut dropped).map(|r| (r, dropped))
                }
                ApiFormat::Anthropic => anthropic::decode_request(self.body).map(|r| (r, Dropped::default())),
            })
            .as_ref()
            .map(|(r, d)| (r, d))
            .map_err(Clone::clone)
    }

    pub fn header(&self, name: &str) -> Option<&'a HeaderValue> {
        self.headers.get(name)
    }
}
