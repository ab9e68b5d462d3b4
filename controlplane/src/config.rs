//! The control plane's configuration, as `main` (or an embedding process) builds it.
//!
//! Nothing here reads the environment: the binary does that once and hands over a `Config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything the control plane needs to start.
#[derive(Clone)]
pub struct Config {
    /// The SQLite database; created (with its directory) if missing.
    pub db_path: PathBuf,
    /// Where gRPC (admin, policy, reflection, health) listens. Port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// The admin token. `None`: read `token_file_for(db_path)`, or create it on first start.
    pub admin_token: Option<String>,
    /// An extra token accepted on `PolicyService` only (the data planes' join token).
    pub dataplane_token: Option<String>,
    /// Base64 of the 32-byte key that encrypts stored credentials. `None`: read
    /// `master_key_file_for(db_path)`, or create it (mode 0600) on first start.
    pub master_key: Option<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("Config")
            .field("db_path", &self.db_path)
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_token", &redacted(&self.admin_token))
            .field("dataplane_token", &redacted(&self.dataplane_token))
            .field("master_key", &redacted(&self.master_key))
            .finish()
    }
}

/// The admin token file beside a database: `drover.db` → `drover.admin-token`.
pub fn token_file_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("admin-token")
}

/// The master key file beside a database: `drover.db` → `drover.master-key`.
pub fn master_key_file_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("master-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_files_replace_the_extension() {
        assert_eq!(
            token_file_for(Path::new("/var/lib/drover/drover.db")),
            Path::new("/var/lib/drover/drover.admin-token")
        );
        assert_eq!(token_file_for(Path::new("state")), Path::new("state.admin-token"));
        assert_eq!(
            master_key_file_for(Path::new("a/drover.db")),
            Path::new("a/drover.master-key")
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config {
            db_path: "d.db".into(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some("tok-123".into()),
            dataplane_token: Some("dp-456".into()),
            master_key: Some("key-789".into()),
        };
        let s = format!("{c:?}");
        assert!(
            !s.contains("tok-123") && !s.contains("dp-456") && !s.contains("key-789"),
            "{s}"
        );
    }
}
