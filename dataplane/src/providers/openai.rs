//! OpenAI and OpenAI-compatible providers: same format in and out, so the request is the
//! caller's body with `model` rewritten, and the answer is relayed as it comes.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;

use super::{Endpoint, ProviderRt};

/// Builds the upstream request. Nothing of the caller's headers is forwarded but the request id.
pub fn request(
    provider: &ProviderRt,
    endpoint: Endpoint,
    body: Bytes,
    request_id: &HeaderValue,
    stream: bool,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(provider.url(endpoint).clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(
            ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        )
        .header("x-request-id", request_id.clone());
    if let Some(auth) = &provider.auth {
        req = req.header(AUTHORIZATION, auth.clone());
    }
    req.body(Full::new(body))
}
