//! drover-tests: what Drover's end-to-end scenarios are built from.
//!
//! * [`gateway`]: builders that run a real control plane and data planes in-process.
//! * [`mock`]: a scripted fake LLM provider (OpenAI and Anthropic wire formats) on loopback.
//! * `src/bin/drover-mock.rs`: a fast fixed-answer provider for the load benchmark (`tests/bench/run.sh`).
//!
//! The scenarios themselves live in `tests/tests/`.

pub mod gateway;
pub mod mock;

pub use gateway::{Gateway, Reply, chat_body};
pub use mock::{Fault, MockProvider};
