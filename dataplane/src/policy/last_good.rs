//! The last-good snapshot file: written after every applied snapshot, read at start so a
//! data plane can serve while the control plane is unreachable. The file holds provider
//! credentials, so it is written with mode 0600, atomically (temporary file, then rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use drover_proto::pb;
use prost::Message;

/// Reads the file; `Ok(None)` if it does not exist.
pub fn read(path: &Path) -> std::io::Result<Option<pb::Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    pb::Snapshot::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Replaces the file with `encoded` (an encoded `pb::Snapshot`).
pub fn write(path: &Path, encoded: &[u8]) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(encoded)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.bin");
        assert!(read(&path).unwrap().is_none());
        let snap = pb::Snapshot {
            store_id: "s".into(),
            version: 4,
            ..Default::default()
        };
        write(&path, &snap.encode_to_vec()).unwrap();
        assert_eq!(read(&path).unwrap().unwrap(), snap);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(&path, b"\xff\xff garbage").unwrap();
        assert!(read(&path).is_err());
    }
}
