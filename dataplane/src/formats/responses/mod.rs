//! The OpenAI Responses API (`POST /v1/responses`) for routes whose provider does not speak it:
//! requests decoded into the canonical model (`request`), answers encoded as `response` objects
//! (`response`) and streams of them (`stream`). A route to OpenAI takes the same-format path and never comes here.

mod reasoning;
mod request;
mod response;
mod stream;

pub use request::decode_request;
pub use response::{echo, encode_response};
pub use stream::StreamEncoder;
