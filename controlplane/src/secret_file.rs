//! The small files beside the database that hold a secret (the admin token, the master key).
//!
//! A missing file is created with mode 0600 and never overwritten (`create_new`), so two
//! processes starting at once agree on one value. Contents are never logged.

use std::io::{ErrorKind, Write};
use std::path::Path;

use crate::error::StartError;

/// Reads the secret in `path`, or creates the file holding `generate()` when it does not exist.
/// Returns the (trimmed) secret and whether the file was created now.
pub(crate) fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> Result<(String, bool), StartError> {
    match read(path)? {
        Some(value) => Ok((value, false)),
        None => {
            let value = generate();
            match create(path, &value) {
                Ok(()) => Ok((value, true)),
                // Another process created it between our read and our create: use theirs.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => match read(path)? {
                    Some(value) => Ok((value, false)),
                    None => Err(file_error(path, e)),
                },
                Err(e) => Err(file_error(path, e)),
            }
        }
    }
}

fn read(path: &Path) -> Result<Option<String>, StartError> {
    let raw = match std::fs::read_to_string(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    warn_if_readable_by_others(path);
    let value = raw.trim();
    if value.is_empty() {
        return Err(StartError::Config(format!(
            "{} is empty; delete it to have a new one created",
            path.display()
        )));
    }
    Ok(Some(value.to_owned()))
}

fn create(path: &Path, value: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = file
        .write_all(value.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        // A half-written secret file would be read back as a wrong secret on the next start.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "secret file is readable by other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn file_error(path: &Path, source: std::io::Error) -> StartError {
    StartError::File {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.admin-token");
        let (first, created) = load_or_create(&path, || "s3cret".into()).unwrap();
        assert_eq!((first.as_str(), created), ("s3cret", true));
        let (again, created) = load_or_create(&path, || "other".into()).unwrap();
        assert_eq!((again.as_str(), created), ("s3cret", false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.admin-token");
        std::fs::write(&path, "\n").unwrap();
        let err = load_or_create(&path, || "new".into()).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }
}
