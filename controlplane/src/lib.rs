//! Drover's control plane: the only writer of durable state.
//!
//! It owns the SQLite store (on its own thread), serves the admin API (`AdminService`), streams
//! versioned policy snapshots to the data planes (`PolicyService.Watch`) and ingests their usage
//! exactly once (`UsageService.Report`), with gRPC reflection and health beside them.
//! `ControlPlane::start` runs it inside any tokio runtime; the `drover-controlplane` binary and
//! `drover serve` are thin wrappers around it.

mod admin_service;
mod app;
mod auth;
mod config;
mod error;
mod policy_service;
mod prices;
mod secret_file;
mod snapshot;
mod store;
mod usage_service;

pub use app::{ControlPlane, MAX_MESSAGE_SIZE};
pub use config::{
    Config, DEFAULT_USAGE_RETENTION, master_key_file_for, token_file_for, usage_retention_days,
};
pub use error::{StartError, StopError, StoreError};
pub use prices::TAKEN as DEFAULT_PRICES_TAKEN;
pub use store::usage::DEDUP_WINDOW as USAGE_DEDUP_WINDOW;
pub use usage_service::{MAX_USAGE_BATCH, MAX_USAGE_MESSAGE_SIZE};
