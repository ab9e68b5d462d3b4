//! Drover's control plane: the only writer of durable state.
//!
//! It owns the SQLite store (on its own thread), serves the admin API (`AdminService`) and
//! streams versioned policy snapshots to the data planes (`PolicyService.Watch`), with gRPC
//! reflection and health beside them. `ControlPlane::start` runs it inside any tokio runtime;
//! the `drover-controlplane` binary and `drover serve` are thin wrappers around it.

mod admin_service;
mod app;
mod auth;
mod config;
mod error;
mod policy_service;
mod secret_file;
mod snapshot;
mod store;

pub use app::{ControlPlane, MAX_MESSAGE_SIZE};
pub use config::{Config, master_key_file_for, token_file_for};
pub use error::{StartError, StopError, StoreError};
