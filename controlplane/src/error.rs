//! The control plane's error types, and the one place they become gRPC statuses.
//!
//! `StoreError` is what the store and the admin API fail with; `From<StoreError> for
//! tonic::Status` is the only mapping to the wire. It never carries a secret, and internal
//! failures (SQLite, decryption) are logged here and reach the caller only as a generic message.

use std::net::SocketAddr;
use std::path::PathBuf;

use drover_proto::model::InvalidPolicy;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The input is not valid policy; nothing was written.
    #[error(transparent)]
    Invalid(#[from] InvalidPolicy),
    /// The named thing does not exist, e.g. `provider "openai"`.
    #[error("{0} not found")]
    NotFound(String),
    /// Something does not exist, with the whole explanation (e.g. what can be done instead).
    #[error("{0}")]
    NotFoundWhy(String),
    /// The named thing exists already, e.g. `provider "openai"`.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The change conflicts with the current state (e.g. removing a provider routes still use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller's role or tenant scope does not reach what it asked for.
    #[error("{0}")]
    Forbidden(String),
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Encrypting or decrypting a stored credential failed (typically: the wrong master key).
    #[error("{0}")]
    Crypto(String),
    /// A stored row cannot be read back as valid policy.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database was written by a newer version of Drover.
    #[error("the database has schema version {found}, newer than the {supported} this build supports")]
    TooNew { found: i64, supported: i64 },
    /// The store thread has stopped (the control plane is shutting down).
    #[error("the store is closed")]
    Closed,
    /// The database file could not be created.
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(invalid) => {
                // The field violation lets a client point at the field without parsing the message.
                use tonic_types::{ErrorDetails, StatusExt as _};
                let details = ErrorDetails::with_bad_request_violation(&invalid.field, &invalid.reason);
                tonic::Status::with_error_details(tonic::Code::InvalidArgument, invalid.to_string(), details)
            }
            StoreError::NotFound(_) | StoreError::NotFoundWhy(_) => tonic::Status::not_found(e.to_string()),
            StoreError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            StoreError::FailedPrecondition(msg) => tonic::Status::failed_precondition(msg),
            StoreError::Forbidden(msg) => tonic::Status::permission_denied(msg),
            StoreError::Closed => tonic::Status::unavailable("the control plane is shutting down"),
            StoreError::Sqlite(ref err) if is_busy(err) => {
                tracing::warn!(error = %err, "store busy");
                tonic::Status::unavailable("the store is busy; retry")
            }
            StoreError::Crypto(ref msg) => {
                tracing::error!(error = %msg, "credential encryption failed");
                tonic::Status::internal("stored credentials cannot be used; check the master key")
            }
            StoreError::Sqlite(_)
            | StoreError::Corrupt(_)
            | StoreError::TooNew { .. }
            | StoreError::File { .. } => {
                tracing::error!(error = %e, "store failure");
                tonic::Status::internal("internal store error")
            }
        }
    }
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable (e.g. a malformed master key).
    #[error("{0}")]
    Config(String),
    /// A file beside the database (token, master key) could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened, migrated or read.
    #[error("opening the store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    /// The gRPC listener could not be bound.
    #[error("binding gRPC on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor set.
    #[error("building gRPC reflection: {0}")]
    Reflection(String),
    /// A startup task failed to run to completion.
    #[error("startup task failed: {0}")]
    Task(String),
}

/// Why the control plane stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The server task or the store thread did not end cleanly.
    #[error("{0}")]
    Task(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_by_kind_and_hide_internals() {
        let cases = [
            (
                StoreError::Invalid(InvalidPolicy::new("name", "must not be empty")),
                tonic::Code::InvalidArgument,
                "name: must not be empty",
            ),
            (
                StoreError::NotFound("provider \"x\"".into()),
                tonic::Code::NotFound,
                "provider \"x\" not found",
            ),
            (
                StoreError::AlreadyExists("provider \"x\"".into()),
                tonic::Code::AlreadyExists,
                "provider \"x\" already exists",
            ),
            (
                StoreError::FailedPrecondition("in use".into()),
                tonic::Code::FailedPrecondition,
                "in use",
            ),
            (StoreError::Closed, tonic::Code::Unavailable, "shutting down"),
            (
                StoreError::Corrupt("row 3 secret-ish detail".into()),
                tonic::Code::Internal,
                "internal store error",
            ),
            (
                StoreError::Crypto("aead failure".into()),
                tonic::Code::Internal,
                "check the master key",
            ),
        ];
        for (err, code, msg) in cases {
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code);
            assert!(status.message().contains(msg), "{:?}", status.message());
            assert!(!status.message().contains("secret-ish"));
        }
    }
}
