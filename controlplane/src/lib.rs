//! Drover's control plane: the only writer of durable state.
//!
//! It owns the SQLite store (on its own thread), serves the admin API (`AdminService`), streams
//! versioned policy snapshots to the data planes (`PolicyService.Watch`) and ingests their usage
//! exactly once (`UsageService.Report`), grants the data planes leases on rate limits and spend
//! caps (`LeaseService.Lease`, accounted in `leases::Book`), with gRPC reflection and health
//! beside them.
//! gRPC is served in plaintext or, with a [`GrpcTls`] identity, over TLS only.
//! `ControlPlane::start` runs it inside any tokio runtime; the `drover-controlplane` binary and
//! `drover serve` are thin wrappers around it.

mod admin_service;
mod app;
pub mod audit;
mod audit_api;
mod auth;
mod config;
mod error;
mod lease_service;
pub mod leases;
mod limits_api;
mod listener;
mod policy_service;
mod prices;
mod roles;
mod secret_file;
mod snapshot;
mod store;
mod tenancy_api;
mod usage_service;

pub use app::{
    ControlPlane, HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS, SHUTDOWN_GRACE,
    TCP_KEEPALIVE,
};
pub use config::{
    Config, ControlArgs, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LEASE_HEARTBEAT, DEFAULT_LEASE_TTL,
    DEFAULT_LIMIT_WINDOW, DEFAULT_USAGE_RETENTION, FlagDuration, GrpcTls, InvalidLeaseTiming, LeaseTiming,
    TlsArgs, master_key_file_for, parse_duration, token_file_for, usage_retention_days,
};
pub use error::{StartError, StopError, StoreError};
pub use lease_service::LeaseCounters;
pub use leases::wire::MAX_UNAPPLIED_ANSWERS;
pub use listener::MAX_PENDING_HANDSHAKES;
pub use prices::TAKEN as DEFAULT_PRICES_TAKEN;
pub use store::usage::DEDUP_WINDOW as USAGE_DEDUP_WINDOW;
