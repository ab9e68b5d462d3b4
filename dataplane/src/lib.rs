//! Drover's data plane: a stateless LLM proxy.
//!
//! Requests are decided from one immutable policy snapshot (swapped atomically) that the
//! control plane streams over gRPC. The data plane keeps no durable state and does not
//! depend on SQLite.

pub mod admin;
pub mod app;
pub mod config;
pub mod error;
pub mod formats;
pub mod policy;
pub mod providers;
pub mod proxy;

pub use app::{DataPlane, StartError};
pub use config::{Args, Config, ProxyArgs, ProxyConfig, process_env};
