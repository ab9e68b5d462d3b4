//! The usage spool file: unreported usage records kept on disk, so that a restart of the
//! data plane does not lose them. Only the reporter task uses it, through `spawn_blocking`;
//! the request path never touches the disk.
//!
//! Format (integers little endian):
//!
//! ```text
//! header   "DRVUSPL1"                                   8 bytes
//! frame    tag: u8 | len: u32 | crc32(tag ++ payload): u32 | payload (len bytes)
//!   tag 1  RECORD  payload: one encoded `drover.v1.UsageRecord`
//!   tag 2  DONE    payload: u64, how many RECORD frames from the start of the file are
//!                  finished (acked or rejected); the largest DONE counts
//! ```
//!
//! RECORD frames are appended and fsync'd before the records are sent. DONE frames are
//! appended after the answer without fsync: losing one only means a resend, which the
//! control plane recognises by request id. When every record in the file is finished the
//! file is truncated back to its header; when the finished prefix grows large the live
//! records are rewritten to a new file (temporary file, fsync, rename). A torn or corrupt
//! tail (a crash in the middle of a write) is ignored on load, and the file is rewritten with
//! the live records only. The file is created with mode 0600.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use drover_proto::pb;
use prost::Message;

const MAGIC: &[u8; 8] = b"DRVUSPL1";
const HEADER_LEN: u64 = MAGIC.len() as u64;
/// tag + len + crc.
const FRAME_HEAD: usize = 9;
const TAG_RECORD: u8 = 1;
const TAG_DONE: u8 = 2;
/// Largest payload accepted on load; anything larger is corruption.
const MAX_PAYLOAD: usize = 1 << 20;
/// Finished records in the file past which the file is rewritten with the live ones only.
pub const COMPACT_AFTER: u64 = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("usage spool file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a Drover usage spool file; refusing to overwrite it", path.display())]
    Foreign { path: PathBuf },
}

/// The open spool file. Invariant: the file holds `records` RECORD frames, of which the
/// first `done` are finished; `len` is its size in bytes.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    file: File,
    len: u64,
    records: u64,
    done: u64,
    /// A failed write could not be rolled back: the file must not be appended to any more.
    broken: bool,
}

/// What [`SpoolFile::open`] found.
#[derive(Debug)]
pub struct Loaded {
    pub file: SpoolFile,
    /// Unfinished records, oldest first.
    pub records: Vec<pb::UsageRecord>,
    /// Bytes ignored at the end (a torn or corrupt tail).
    pub torn_bytes: u64,
    /// Frames whose checksum matched but whose record did not decode (skipped).
    pub undecodable: u64,
}

/// Appends the RECORD frames of `records` to `out`.
pub fn encode<'a>(records: impl IntoIterator<Item = &'a pb::UsageRecord>, out: &mut Vec<u8>) -> u64 {
    let mut n = 0;
    let mut payload = Vec::new();
    for record in records {
        payload.clear();
        // Encoding into a Vec cannot run out of space.
        let _ = record.encode(&mut payload);
        push_frame(out, TAG_RECORD, &payload);
        n += 1;
    }
    n
}

fn push_frame(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32(&[&[tag], payload]).to_le_bytes());
    out.extend_from_slice(payload);
}

impl SpoolFile {
    /// Opens `path` (creating it if missing), returns its unfinished records, and leaves the
    /// file rewritten to hold exactly them.
    pub fn open(path: &Path) -> Result<Loaded, SpoolError> {
        let io = |source| SpoolError::Io {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let parsed = parse(&bytes).ok_or_else(|| SpoolError::Foreign {
            path: path.to_owned(),
        })?;
        let mut records = Vec::with_capacity(parsed.live.len());
        let mut undecodable = 0;
        for payload in &parsed.live {
            match pb::UsageRecord::decode(*payload) {
                Ok(r) => records.push(r),
                Err(_) => undecodable += 1,
            }
        }
        let mut frames = Vec::new();
        let count = encode(&records, &mut frames);
        let (file, len) = replace(path, &frames).map_err(io)?;
        Ok(Loaded {
            file: SpoolFile {
                path: path.to_owned(),
                file,
                len,
                records: count,
                done: 0,
                broken: false,
            },
            records,
            torn_bytes: parsed.torn_bytes,
            undecodable,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unfinished records in the file.
    #[cfg(test)]
    pub fn live(&self) -> u64 {
        self.records - self.done
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends `count` RECORD frames (from [`encode`]) and fsyncs.
    pub fn append(&mut self, frames: &[u8], count: u64) -> std::io::Result<()> {
        self.write(frames, true)?;
        self.records += count;
        Ok(())
    }

    /// Whether finishing `n` more records calls for [`SpoolFile::rewrite`] rather than
    /// [`SpoolFile::finish`]: the finished prefix is large and some records stay live.
    pub fn should_compact(&self, n: u64) -> bool {
        let done = (self.done + n).min(self.records);
        done >= COMPACT_AFTER && done < self.records
    }

    /// Marks the oldest `n` unfinished records finished. When nothing is left the file is
    /// truncated to its header. The in-memory watermark moves even if the write fails: the
    /// next DONE frame carries it, and a lost one costs only a resend.
    pub fn finish(&mut self, n: u64) -> std::io::Result<()> {
        self.usable()?;
        self.done = (self.done + n).min(self.records);
        if self.done == self.records {
            if let Err(e) = self.file.set_len(HEADER_LEN) {
                self.broken = true;
                return Err(e);
            }
            self.len = HEADER_LEN;
            self.records = 0;
            self.done = 0;
            return Ok(());
        }
        let mut frame = Vec::with_capacity(FRAME_HEAD + 8);
        push_frame(&mut frame, TAG_DONE, &self.done.to_le_bytes());
        self.write(&frame, false)
    }

    /// Replaces the file with `count` live RECORD frames (from [`encode`]): the records
    /// still unfinished after the ones being finished now.
    pub fn rewrite(&mut self, frames: &[u8], count: u64) -> std::io::Result<()> {
        let (file, len) = replace(&self.path, frames)?;
        self.file = file;
        self.len = len;
        self.records = count;
        self.done = 0;
        self.broken = false;
        Ok(())
    }

    fn usable(&self) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::other("an earlier write could not be rolled back"));
        }
        Ok(())
    }

    /// Appends `bytes`; on failure cuts the file back so that no partial frame is left
    /// for later frames to follow.
    fn write(&mut self, bytes: &[u8], sync: bool) -> std::io::Result<()> {
        self.usable()?;
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }
}

struct Parsed<'a> {
    /// Payloads of the unfinished RECORD frames.
    live: Vec<&'a [u8]>,
    torn_bytes: u64,
}

/// `None` if `bytes` is not a spool file. An empty file (or a torn header) is an empty spool.
fn parse(bytes: &[u8]) -> Option<Parsed<'_>> {
    let Some(body) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return MAGIC.starts_with(bytes).then(|| Parsed {
            live: Vec::new(),
            torn_bytes: bytes.len() as u64,
        });
    };
    let mut records = Vec::new();
    let mut done = 0u64;
    let mut rest = body;
    while let Some((tag, payload, next)) = frame(rest) {
        match tag {
            TAG_RECORD => records.push(payload),
            TAG_DONE => match <[u8; 8]>::try_from(payload) {
                Ok(n) => done = done.max(u64::from_le_bytes(n)),
                Err(_) => break,
            },
            _ => break,
        }
        rest = next;
    }
    let done = usize::try_from(done).unwrap_or(usize::MAX).min(records.len());
    Some(Parsed {
        live: records.split_off(done),
        torn_bytes: rest.len() as u64,
    })
}

/// One whole, intact frame at the start of `bytes`: (tag, payload, rest).
fn frame(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = rest.get(8..8 + len)?;
    if crc32(&[&[tag], payload]) != crc {
        return None;
    }
    Some((tag, payload, rest.get(8 + len..)?))
}

/// Writes the header and `frames` to a temporary file beside `path`, fsyncs it, renames it
/// over `path`, and returns it opened for appending with its length.
fn replace(path: &Path, frames: &[u8]) -> std::io::Result<(File, u64)> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    {
        let mut f = private(OpenOptions::new().write(true).create(true).truncate(true)).open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(frames)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename durable; not every platform lets a directory be opened.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let file = private(OpenOptions::new().append(true)).open(path)?;
    Ok((file, HEADER_LEN + frames.len() as u64))
}

fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts
}

/// CRC-32 (IEEE 802.3) of the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            status: 200,
            input_tokens: 12,
            cost_nano_usd: 345,
            ..Default::default()
        }
    }

    fn ids(records: &[pb::UsageRecord]) -> Vec<&str> {
        records.iter().map(|r| r.request_id.as_str()).collect()
    }

    fn frames(records: &[pb::UsageRecord]) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let n = encode(records, &mut out);
        (out, n)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xcbf4_3926);
    }

    #[test]
    fn records_survive_a_reopen_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.spool");
        let mut loaded = SpoolFile::open(&path).unwrap();
        assert!(loaded.records.is_empty());
        let (f, n) = frames(&[rec("a"), rec("b"), rec("c")]);
        loaded.file.append(&f, n).unwrap();
        loaded.file.finish(1).unwrap();
        drop(loaded);

        let mut loaded = SpoolFile::open(&path).unwrap();
        assert_eq!(ids(&loaded.records), ["b", "c"]);
        assert_eq!(loaded.records[0], rec("b"));
        assert_eq!(loaded.torn_bytes, 0);
        assert_eq!(loaded.file.live(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Everything finished: back to the bare header.
        loaded.file.finish(2).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), HEADER_LEN);
        drop(loaded);
        assert!(SpoolFile::open(&path).unwrap().records.is_empty());
    }

    #[test]
    fn a_torn_tail_is_ignored_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.spool");
        let mut loaded = SpoolFile::open(&path).unwrap();
        let all: Vec<_> = (0..4).map(|i| rec(&format!("r{i}"))).collect();
        let (f, n) = frames(&all);
        loaded.file.append(&f, n).unwrap();
        loaded.file.finish(1).unwrap();
        drop(loaded);
        let whole = std::fs::read(&path).unwrap();

        // Cut the file at every length: what loads is always the finished-aware prefix of
        // whole frames, never an error and never a half record.
        let frame_len = f.len() / 4;
        for cut in 0..=whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let loaded = SpoolFile::open(&path).unwrap();
            let body = cut.saturating_sub(HEADER_LEN as usize);
            let whole_records = (body / frame_len).min(4);
            let done_frame_whole = body >= f.len() + FRAME_HEAD + 8;
            let expect: Vec<_> = all[..whole_records]
                .iter()
                .skip(usize::from(done_frame_whole))
                .map(|r| r.request_id.as_str())
                .collect();
            assert_eq!(ids(&loaded.records), expect, "cut at {cut}");
            drop(loaded);
            // The rewritten file is clean: it loads the same with nothing torn.
            let again = SpoolFile::open(&path).unwrap();
            assert_eq!(ids(&again.records), expect, "reload after cut at {cut}");
            assert_eq!(again.torn_bytes, 0);
        }
    }

    #[test]
    fn corruption_stops_the_load_and_appends_continue_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.spool");
        let mut loaded = SpoolFile::open(&path).unwrap();
        let (f, n) = frames(&[rec("a"), rec("b")]);
        loaded.file.append(&f, n).unwrap();
        drop(loaded);
        // Zeros where a crash left the file longer than its data.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 64]);
        std::fs::write(&path, &bytes).unwrap();

        let mut loaded = SpoolFile::open(&path).unwrap();
        assert_eq!(ids(&loaded.records), ["a", "b"]);
        assert_eq!(loaded.torn_bytes, 64);
        let (f, n) = frames(&[rec("c")]);
        loaded.file.append(&f, n).unwrap();
        drop(loaded);
        assert_eq!(ids(&SpoolFile::open(&path).unwrap().records), ["a", "b", "c"]);
    }

    #[test]
    fn a_large_finished_prefix_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.spool");
        let mut loaded = SpoolFile::open(&path).unwrap();
        let all: Vec<_> = (0..COMPACT_AFTER + 2).map(|i| rec(&format!("r{i}"))).collect();
        let (f, n) = frames(&all);
        loaded.file.append(&f, n).unwrap();
        assert!(!loaded.file.should_compact(COMPACT_AFTER - 1));
        assert!(loaded.file.should_compact(COMPACT_AFTER));
        assert!(
            !loaded.file.should_compact(COMPACT_AFTER + 2),
            "nothing live: truncate instead"
        );
        let (live, count) = frames(&all[COMPACT_AFTER as usize..]);
        loaded.file.rewrite(&live, count).unwrap();
        assert_eq!(loaded.file.live(), 2);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_LEN + live.len() as u64
        );
        drop(loaded);
        let loaded = SpoolFile::open(&path).unwrap();
        assert_eq!(
            ids(&loaded.records),
            [format!("r{COMPACT_AFTER}"), format!("r{}", COMPACT_AFTER + 1)]
        );
    }

    #[test]
    fn a_foreign_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"shopping list: milk").unwrap();
        assert!(matches!(SpoolFile::open(&path), Err(SpoolError::Foreign { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"shopping list: milk");
    }
}
