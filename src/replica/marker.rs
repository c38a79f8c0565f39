//! `<data>/replica`: the mark of a read replica's data directory, naming
//! the archive it follows. While it is there, `ferro serve` runs the
//! directory only as a replica of that archive (never as a writer, whose
//! log would fork from the primary's); `ferroctl promote` removes it.
//!
//! ```text
//! FERROREP 1\n          magic and version
//! of <archive url>\n    the followed archive
//! ```
//!
//! Written aside, fsynced and renamed (`fsutil::write_atomic`); removed
//! with a directory fsync.

use std::io;
use std::path::{Path, PathBuf};

use crate::datadir::Layout;

const MAGIC_LINE: &str = "FERROREP 1";

/// The marker's path in a data directory.
pub fn path(layout: &Layout) -> PathBuf {
    layout.root.join("replica")
}

/// The archive URL the marker names; `None` when there is no marker.
pub fn read(layout: &Layout) -> io::Result<Option<String>> {
    let p = path(layout);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a replica marker: {why}", p.display()),
        )
    };
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC_LINE) {
        return Err(invalid("bad first line"));
    }
    let url = lines
        .next()
        .and_then(|l| l.strip_prefix("of "))
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("no `of` line"))?;
    Ok(Some(url.to_owned()))
}

/// Marks `layout`'s directory as a replica of `url` (durably).
pub fn write(layout: &Layout, url: &str) -> io::Result<()> {
    debug_assert!(!url.contains('\n'), "archive URLs are one line");
    crate::fsutil::create_dir_all_durable(&layout.root)?;
    crate::fsutil::write_atomic(
        &path(layout),
        format!("{MAGIC_LINE}\nof {url}\n").as_bytes(),
    )
}

/// Removes the marker (durably): the directory may then be served as a
/// writer.
pub fn remove(layout: &Layout) -> io::Result<()> {
    match std::fs::remove_file(path(layout)) {
        Ok(()) => crate::fsutil::fsync_dir(&layout.root),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `dir` holds any file (a log segment, a snapshot).
pub fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(read(&layout).unwrap(), None);
        write(&layout, "s3://bucket/prefix").unwrap();
        assert_eq!(
            read(&layout).unwrap().as_deref(),
            Some("s3://bucket/prefix")
        );
        std::fs::write(path(&layout), "something else\n").unwrap();
        assert!(read(&layout).is_err());
        remove(&layout).unwrap();
        assert_eq!(read(&layout).unwrap(), None);
        remove(&layout).unwrap();
    }
}
