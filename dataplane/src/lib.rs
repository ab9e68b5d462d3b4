//! Drover's data plane: a stateless LLM proxy.
//!
//! Requests are decided from one immutable policy snapshot (swapped atomically) that the
//! control plane streams over gRPC, and each request's usage is reported back to it. The data
//! plane keeps no durable state of its own (optional files only: the last-good policy and the
//! spool of usage records not yet acknowledged) and does not depend on SQLite.

// Private except the crate's real API (re-exported below), the wire formats, whose codecs
// the test harness also drives, and the lease cells and client (with the counters they
// touch), which the lease simulation drives without sockets; so dead code shows.
mod admin;
mod app;
mod budget;
mod cache;
mod clock;
mod config;
mod control;
mod error;
pub mod formats;
mod health;
pub mod limits;
pub mod metrics;
mod policy;
mod providers;
mod proxy;
mod server;
mod state;
mod usage;

pub use app::{DataPlane, StartError};
pub use budget::room_for;
pub use config::{
    Args, Config, LocalUsage, ProxyArgs, ProxyConfig, Switch, UsageArgs, UsageConfig, process_env,
};
pub use health::MAX_DIRECT_TARGETS;
pub use providers::EnvLookup;
pub use providers::credential::EnvAllowList;
