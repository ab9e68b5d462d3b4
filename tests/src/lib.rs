//! drover-tests: what Drover's end-to-end scenarios are built from.
//!
//! * [`gateway`]: builders that run a real control plane and data planes in-process.
//! * [`mock`]: a scripted fake LLM provider (OpenAI, Azure OpenAI, Anthropic and Gemini wire formats) on loopback.
//! * `src/bin/drover-ingest-bench.rs`: how many usage records a second one control plane applies.
//! * `src/bin/drover-mock.rs`: a fast fixed-answer provider for the load benchmark (`tests/bench/run.sh`).
//!
//! The scenarios live in `tests/tests/`; the translation conformance corpus in `tests/corpus/`.

pub mod gateway;
pub mod mock;

pub use gateway::{Gateway, Reply, chat_body};
pub use mock::{Fault, MockProvider};
