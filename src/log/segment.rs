//! Segment files: their names, listing them in order, creating a new one.
//!
//! A segment is `log/<first seq, 20 digits>.log`. New segments are written
//! as `<name>.tmp` with their header, fsynced, renamed, and the directory
//! fsynced, so a `.log` file always starts with a whole header.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::format::{SegmentHeader, FORMAT_VERSION};
use crate::storage::{self, FileHandle, FileSystem, OpenMode};

pub const SEGMENT_SUFFIX: &str = ".log";
const SEQ_DIGITS: usize = 20;

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:0SEQ_DIGITS$}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name back into its first sequence number.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `log_dir`, ordered by first sequence number. Only
/// reads the directory: read-only tools list segments while a server runs.
pub fn list_segments(log_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(log_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_segment_file_name(name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `.log.tmp` leftovers of an interrupted segment creation. Only
/// the owner of the locked data directory calls this (the writer's open
/// path), never a reader. Returns the files removed.
pub fn remove_leftover_temp_files(log_dir: &Path) -> io::Result<Vec<PathBuf>> {
    remove_leftover_temp_files_with(&*storage::real(), log_dir)
}

/// [`remove_leftover_temp_files`] through `fs`.
pub fn remove_leftover_temp_files_with(
    fs: &dyn FileSystem,
    log_dir: &Path,
) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(log_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".log.tmp") {
            fs.remove_file(&entry.path())?;
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        fs.sync_dir(log_dir)?;
    }
    Ok(removed)
}

/// Removes every segment after the one that starts at `active_first_seq`,
/// and every `.log.tmp` file, then fsyncs the directory: what a segment
/// creation that failed half-way may have left. Such a segment holds only
/// a header (the writer never appended to it), and left in place it would
/// break the sequence once records are appended to the active segment.
/// Returns the files removed.
pub fn remove_segments_after(
    fs: &dyn FileSystem,
    log_dir: &Path,
    active_first_seq: u64,
) -> io::Result<Vec<PathBuf>> {
    let mut removed = remove_leftover_temp_files_with(fs, log_dir)?;
    for (first_seq, path) in list_segments(log_dir)? {
        if first_seq > active_first_seq {
            fs.remove_file(&path)?;
            removed.push(path);
        }
    }
    fs.sync_dir(log_dir)?;
    Ok(removed)
}

/// Creates a new, durable segment holding only its header, and returns it
/// opened for appending.
pub fn create_segment(
    log_dir: &Path,
    first_seq: u64,
    prev_crc: u32,
) -> io::Result<(PathBuf, File)> {
    let path = create_segment_file(&*storage::real(), log_dir, first_seq, prev_crc)?;
    let file = OpenOptions::new().append(true).open(&path)?;
    Ok((path, file))
}

/// [`create_segment`] through `fs`.
pub fn create_segment_with(
    fs: &dyn FileSystem,
    log_dir: &Path,
    first_seq: u64,
    prev_crc: u32,
) -> io::Result<(PathBuf, Box<dyn FileHandle>)> {
    let path = create_segment_file(fs, log_dir, first_seq, prev_crc)?;
    let file = fs.open(&path, OpenMode::Append)?;
    Ok((path, file))
}

/// The header goes to `<name>.tmp`, which is fsynced, renamed to `<name>`,
/// and the directory fsynced: a `.log` file always starts with a whole
/// header, and a segment the writer appends to is never lost by a power
/// failure (its name is durable before the first record is written).
fn create_segment_file(
    fs: &dyn FileSystem,
    log_dir: &Path,
    first_seq: u64,
    prev_crc: u32,
) -> io::Result<PathBuf> {
    let path = log_dir.join(segment_file_name(first_seq));
    let tmp = log_dir.join(format!("{}.tmp", segment_file_name(first_seq)));
    let header = SegmentHeader {
        version: FORMAT_VERSION,
        first_seq,
        prev_crc,
    };
    {
        let f = fs.open(&tmp, OpenMode::CreateTruncate)?;
        f.write_all(&header.encode())?;
        f.sync_all()?;
    }
    fs.rename(&tmp, &path)?;
    fs.sync_dir(log_dir)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_never_removes_and_cleanup_does() {
        let dir = tempfile::tempdir().unwrap();
        create_segment(dir.path(), 1, 0).unwrap();
        let tmp = dir.path().join(format!("{}.tmp", segment_file_name(9)));
        fs::write(&tmp, b"half").unwrap();
        let listed = list_segments(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(tmp.exists(), "listing must not touch the directory");
        assert_eq!(
            remove_leftover_temp_files(dir.path()).unwrap(),
            vec![tmp.clone()]
        );
        assert!(!tmp.exists());
        assert_eq!(list_segments(dir.path()).unwrap(), listed);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.log");
        assert_eq!(parse_segment_file_name("00000000000000000001.log"), Some(1));
        assert_eq!(parse_segment_file_name("1.log"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.log"), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
    }
}
