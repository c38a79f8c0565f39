//! Snapshots: the projection at a sequence number, in a file, so startup
//! replays only the log after it.
//!
//! - `format`: the bytes (`log-format/SNAPSHOT.md`);
//! - this file: names, listing, writing (atomically), loading, pruning;
//! - `scheduler`: when the server takes one by itself.
//!
//! A snapshot is `snapshots/<seq, 20 digits>.snap`. It is written as
//! `<name>.tmp`, fsynced, renamed, and the directory fsynced, so a `.snap`
//! file is always whole; a damaged one fails its checksums and is skipped.
//!
//! Invariant: snapshots are caches. The log is the truth: a snapshot whose
//! checks fail, or that does not chain to the log (its `chain_crc` is not
//! the checksum of the log's record `seq`), is never used.

pub mod format;
pub mod scheduler;

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use format::{SnapshotFormatError, SnapshotHeader, SNAPSHOT_HEADER_BYTES, SNAPSHOT_VERSION};

use crate::fsutil::create_dir_all_durable_with;
use crate::projection::State;
use crate::storage::{self, FileSystem, HandleWriter, OpenMode};

pub const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";
const SEQ_DIGITS: usize = 20;

pub fn snapshot_file_name(seq: u64) -> String {
    format!("{seq:0SEQ_DIGITS$}{SNAPSHOT_SUFFIX}")
}

/// Parses a snapshot file name back into its sequence number.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A snapshot file found in the directory (not yet checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotFile {
    /// The sequence number its name claims.
    pub seq: u64,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Format {
        path: PathBuf,
        source: SnapshotFormatError,
    },
    #[error("snapshot {path}: its name says sequence {named} but its header says {header}")]
    NameMismatch {
        path: PathBuf,
        named: u64,
        header: u64,
    },
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl SnapshotError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn format(path: &Path) -> impl FnOnce(SnapshotFormatError) -> SnapshotError + '_ {
        move |source| SnapshotError::Format {
            path: path.to_owned(),
            source,
        }
    }

    /// Why, without the path (for logs that name the file in a field).
    pub fn reason(&self) -> String {
        match self {
            SnapshotError::Format { source, .. } => source.to_string(),
            SnapshotError::NameMismatch { named, header, .. } => {
                format!("its name says sequence {named} but its header says {header}")
            }
            SnapshotError::Io { source, .. } => source.to_string(),
        }
    }
}

/// Snapshot files in `dir`, oldest first. A missing directory has none.
/// Only reads the directory.
pub fn list(dir: &Path) -> io::Result<Vec<SnapshotFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_snapshot_file_name(name) {
            out.push(SnapshotFile {
                seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// A snapshot that passed every check.
#[derive(Debug, Clone)]
pub struct LoadedSnapshot {
    pub path: PathBuf,
    pub header: SnapshotHeader,
    pub state: State,
}

/// Reads, checks and decodes a snapshot file.
pub fn load(file: &SnapshotFile) -> Result<LoadedSnapshot, SnapshotError> {
    let path = &file.path;
    // Read, not mapped: see `format::check_read`. Snapshot files are never
    // modified after their rename into place (only replaced by a rename or
    // removed whole), so the bytes decoded are the bytes checked.
    let header = check(file)?;
    let mut f = File::open(path).map_err(SnapshotError::io(path))?;
    f.seek(SeekFrom::Start(SNAPSHOT_HEADER_BYTES as u64))
        .map_err(SnapshotError::io(path))?;
    let state = format::decode_read(&header, f).map_err(SnapshotError::format(path))?;
    Ok(LoadedSnapshot {
        path: path.clone(),
        header,
        state,
    })
}

/// Checks a snapshot file's header, length and payload checksum without
/// decoding the state.
pub fn check(file: &SnapshotFile) -> Result<SnapshotHeader, SnapshotError> {
    let path = &file.path;
    let mut f = File::open(path).map_err(SnapshotError::io(path))?;
    let len = f.metadata().map_err(SnapshotError::io(path))?.len();
    let header = format::check_read(&mut f, len).map_err(SnapshotError::format(path))?;
    if header.seq != file.seq {
        return Err(SnapshotError::NameMismatch {
            path: path.clone(),
            named: file.seq,
            header: header.seq,
        });
    }
    Ok(header)
}

/// Reads only a snapshot's header (for choosing one by sequence or time).
pub fn read_header(file: &SnapshotFile) -> Result<SnapshotHeader, SnapshotError> {
    use std::io::Read;
    let path = &file.path;
    let mut f = File::open(path).map_err(SnapshotError::io(path))?;
    let mut b = [0u8; SNAPSHOT_HEADER_BYTES];
    let mut filled = 0;
    while filled < b.len() {
        let n = f.read(&mut b[filled..]).map_err(SnapshotError::io(path))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let header = SnapshotHeader::decode(&b[..filled]).map_err(SnapshotError::format(path))?;
    let actual = f.metadata().map_err(SnapshotError::io(path))?.len();
    if actual != header.file_bytes() {
        return Err(SnapshotError::Format {
            path: path.clone(),
            source: SnapshotFormatError::Length {
                expected: header.file_bytes(),
                actual,
            },
        });
    }
    if header.seq != file.seq {
        return Err(SnapshotError::NameMismatch {
            path: path.clone(),
            named: file.seq,
            header: header.seq,
        });
    }
    Ok(header)
}

/// A snapshot just written.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenSnapshot {
    pub path: PathBuf,
    pub header: SnapshotHeader,
}

/// Writes a snapshot of `state`, whose last record has checksum
/// `chain_crc`, into `dir`: temporary file, fsync, rename, fsync of the
/// directory. Replaces a snapshot of the same sequence number (same log,
/// same state).
pub fn write(dir: &Path, state: &State, chain_crc: u32) -> Result<WrittenSnapshot, SnapshotError> {
    write_with_fs(&*storage::real(), dir, state, chain_crc)
}

/// [`write`] through `fs`.
pub fn write_with_fs(
    fs: &dyn FileSystem,
    dir: &Path,
    state: &State,
    chain_crc: u32,
) -> Result<WrittenSnapshot, SnapshotError> {
    create_dir_all_durable_with(fs, dir).map_err(SnapshotError::io(dir))?;
    let name = snapshot_file_name(state.last_seq);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let header = {
        let f = fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(SnapshotError::io(&tmp))?;
        let header = format::encode_to(&mut HandleWriter::new(&*f), state, chain_crc)
            .map_err(SnapshotError::format(&tmp))?;
        f.sync_all().map_err(SnapshotError::io(&tmp))?;
        header
    };
    fs.rename(&tmp, &path).map_err(SnapshotError::io(&path))?;
    fs.sync_dir(dir).map_err(SnapshotError::io(dir))?;
    Ok(WrittenSnapshot { path, header })
}

/// Removes `.snap.tmp` leftovers of an interrupted write. Only the owner of
/// the locked data directory calls this. Returns the files removed.
pub fn remove_leftover_temp_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    remove_leftover_temp_files_with(&*storage::real(), dir)
}

/// [`remove_leftover_temp_files`] through `fs`.
pub fn remove_leftover_temp_files_with(
    fs: &dyn FileSystem,
    dir: &Path,
) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(TEMP_SUFFIX))
        {
            fs.remove_file(&entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        fs.sync_dir(dir)?;
    }
    Ok(removed)
}

/// Which snapshots pruning keeps and which it removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    pub keep: Vec<SnapshotFile>,
    pub remove: Vec<SnapshotFile>,
}

/// Decides what [`prune`] removes: every snapshot but the `keep` newest
/// whose checksums verify, and the *base* snapshot when the log no longer
/// starts at 1 (the oldest valid one at or after `log_first_seq - 1`): after
/// compaction it is what every state within the kept history is rebuilt
/// from. Snapshots that fail their checks are removed too; they were
/// reported when they were skipped.
pub fn plan_prune(dir: &Path, keep: usize, log_first_seq: Option<u64>) -> io::Result<PrunePlan> {
    let files = list(dir)?;
    let valid: Vec<bool> = files.iter().map(|f| check(f).is_ok()).collect();
    let mut kept = vec![false; files.len()];
    let mut newest_left = keep;
    for i in (0..files.len()).rev() {
        if newest_left == 0 {
            break;
        }
        if valid[i] {
            kept[i] = true;
            newest_left -= 1;
        }
    }
    if let Some(first) = log_first_seq.filter(|&s| s > 1) {
        if let Some(base) = (0..files.len()).find(|&i| valid[i] && files[i].seq + 1 >= first) {
            kept[base] = true;
        }
    }
    let mut plan = PrunePlan::default();
    for (file, keep) in files.into_iter().zip(kept) {
        if keep {
            plan.keep.push(file);
        } else {
            plan.remove.push(file);
        }
    }
    Ok(plan)
}

/// Carries out [`plan_prune`]. Returns what it removed.
pub fn prune(dir: &Path, keep: usize, log_first_seq: Option<u64>) -> io::Result<Vec<SnapshotFile>> {
    prune_with_fs(&*storage::real(), dir, keep, log_first_seq)
}

/// [`prune`] through `fs`.
pub fn prune_with_fs(
    fs: &dyn FileSystem,
    dir: &Path,
    keep: usize,
    log_first_seq: Option<u64>,
) -> io::Result<Vec<SnapshotFile>> {
    let plan = plan_prune(dir, keep, log_first_seq)?;
    for file in &plan.remove {
        match fs.remove_file(&file.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !plan.remove.is_empty() {
        fs.sync_dir(dir)?;
    }
    Ok(plan.remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_at(seq: u64) -> State {
        State {
            last_seq: seq,
            last_time_unix_ns: seq * 10,
            ..State::default()
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(snapshot_file_name(7), "00000000000000000007.snap");
        assert_eq!(
            parse_snapshot_file_name("00000000000000000007.snap"),
            Some(7)
        );
        assert_eq!(
            parse_snapshot_file_name("00000000000000000007.snap.tmp"),
            None
        );
        assert_eq!(parse_snapshot_file_name("7.snap"), None);
    }

    #[test]
    fn write_load_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [3, 5, 9, 12] {
            write(dir.path(), &state_at(seq), seq as u32).unwrap();
        }
        let files = list(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [3, 5, 9, 12]
        );
        let loaded = load(&files[2]).unwrap();
        assert_eq!(loaded.state, state_at(9));
        assert_eq!(loaded.header.chain_crc, 9);
        assert_eq!(read_header(&files[2]).unwrap(), loaded.header);

        // Damage the newest: it no longer counts toward the two kept.
        let mut bytes = fs::read(&files[3].path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&files[3].path, bytes).unwrap();
        assert!(load(&files[3]).is_err());
        // The log starts at 4: snapshot 3 is its base and stays.
        let removed = prune(dir.path(), 2, Some(4)).unwrap();
        assert_eq!(removed.iter().map(|f| f.seq).collect::<Vec<_>>(), [12]);
        let removed = prune(dir.path(), 1, Some(1)).unwrap();
        assert_eq!(removed.iter().map(|f| f.seq).collect::<Vec<_>>(), [3, 5]);
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn leftovers_are_only_removed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("00000000000000000001.snap.tmp");
        fs::write(&tmp, b"half").unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
        assert!(tmp.exists());
        assert_eq!(remove_leftover_temp_files(dir.path()).unwrap(), vec![tmp]);
    }
}
