//! Drover's data plane: a stateless LLM proxy.
//!
//! Requests are decided from one immutable policy snapshot (swapped atomically) that the
//! control plane streams over gRPC, and each request's usage is reported back to it. The data
//! plane keeps no durable state of its own (optional files only: the last-good policy and the
//! spool of usage records not yet acknowledged) and does not depend on SQLite.

pub mod admin;
pub mod app;
pub mod budget;
pub mod cache;
pub mod clock;
pub mod config;
pub mod control;
pub mod error;
pub mod formats;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod server;
pub mod state;
pub mod usage;

pub use app::{DataPlane, StartError};
pub use config::{
    Args, Config, LocalUsage, ProxyArgs, ProxyConfig, Switch, UsageArgs, UsageConfig, process_env,
};
