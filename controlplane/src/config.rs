//! The control plane's configuration, as `main` (or an embedding process) builds it.
//!
//! Nothing here reads the environment: the binary does that once and hands over a `Config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long raw usage records are kept before they are compacted into the daily rollups.
pub const DEFAULT_USAGE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

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
    /// Age after which raw usage records are compacted into the daily rollups (and deleted);
    /// totals stay exact, per-request detail and sub-day time ranges go. `None` (or zero): keep
    /// raw records forever. Usually [`DEFAULT_USAGE_RETENTION`].
    pub usage_retention: Option<Duration>,
}

impl Config {
    /// The usage retention in force: `None` keeps raw records forever.
    pub fn usage_retention(&self) -> Option<Duration> {
        self.usage_retention.filter(|d| !d.is_zero())
    }
}

/// The retention for a number of days, as the binaries take it: 0 keeps raw records forever.
pub fn usage_retention_days(days: u32) -> Option<Duration> {
    (days > 0).then(|| Duration::from_secs(u64::from(days) * 24 * 3600))
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
            .field("usage_retention", &self.usage_retention)
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
    fn retention_zero_or_none_keeps_everything() {
        assert_eq!(usage_retention_days(0), None);
        assert_eq!(usage_retention_days(30), Some(DEFAULT_USAGE_RETENTION));
        let mut c = Config {
            db_path: "d.db".into(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: None,
            dataplane_token: None,
            master_key: None,
            usage_retention: Some(Duration::ZERO),
        };
        assert_eq!(c.usage_retention(), None);
        c.usage_retention = Some(Duration::from_secs(60));
        assert_eq!(c.usage_retention(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config {
            db_path: "d.db".into(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some("tok-123".into()),
            dataplane_token: Some("dp-456".into()),
            master_key: Some("key-789".into()),
            usage_retention: Some(DEFAULT_USAGE_RETENTION),
        };
        let s = format!("{c:?}");
        assert!(
            !s.contains("tok-123") && !s.contains("dp-456") && !s.contains("key-789"),
            "{s}"
        );
    }
}
