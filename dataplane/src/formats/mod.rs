//! Wire formats the data plane speaks: request bodies parsed shallowly, error shapes, SSE framing.
//! Owns no I/O; every function here is pure and tested table-driven.

pub mod anthropic;
pub mod gemini;
pub mod ir;
pub mod openai;
pub mod sse;
pub mod usage;
