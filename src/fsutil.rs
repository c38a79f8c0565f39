//! Small file-system helpers whose durability rules every writer shares:
//! a directory is fsynced after a file in it is created, renamed or removed,
//! and a file that must not be lost is written aside, fsynced and renamed.
//!
//! Each helper has a `*_with` form that goes through a [`FileSystem`] (the
//! seam power-loss tests replace); the plain form uses the real one.

use std::io;
use std::path::Path;

use crate::storage::{self, FileSystem, OpenMode};

/// Makes the directory entry changes in `dir` (create, rename, unlink)
/// durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    storage::real().sync_dir(dir)
}

/// Creates `dir` and every missing parent, fsyncing each parent whose
/// entries changed, so the new directory survives power loss.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    create_dir_all_durable_with(&*storage::real(), dir)
}

/// [`create_dir_all_durable`] through `fs`.
///
/// A directory that already exists is taken as durable: callers that may
/// race with another thread creating it (which may not have fsynced the
/// parent yet) use [`ensure_dir_durable_with`] instead.
pub fn create_dir_all_durable_with(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_durable_with(fs, parent)?;
    }
    match fs.create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fs.sync_dir(parent)?;
    }
    Ok(())
}

/// Like [`create_dir_all_durable_with`], but also fsyncs the parent of
/// `dir` when `dir` already exists: another thread may have just created it
/// and not fsynced its parent yet, and what the caller puts in `dir` must
/// not depend on that thread's progress.
pub fn ensure_dir_durable_with(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        return create_dir_all_durable_with(fs, dir);
    }
    match dir.parent() {
        Some(parent) => fs.sync_dir(parent),
        None => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync,
/// rename over `path`, fsync the directory. A crash leaves either the old
/// file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(&*storage::real(), path, bytes)
}

/// [`write_atomic`] through `fs`.
pub fn write_atomic_with(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let f = fs.open(&tmp, OpenMode::CreateTruncate)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn directories_are_created_durably() {
        let root = tempfile::tempdir().unwrap();
        let fs = SimFs::new(root.path()).unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all_durable_with(&fs, &deep).unwrap();
        let out = tempfile::tempdir().unwrap();
        fs.durable_image().materialize(out.path()).unwrap();
        assert!(out.path().join("a/b/c").is_dir());
    }

    #[test]
    fn atomic_writes_survive_whole() {
        let root = tempfile::tempdir().unwrap();
        let fs = SimFs::new(root.path()).unwrap();
        let p = root.path().join("x.conf");
        write_atomic_with(&fs, &p, b"one").unwrap();
        write_atomic_with(&fs, &p, b"two").unwrap();
        let image = fs.durable_image();
        assert_eq!(image.file(Path::new("x.conf")).unwrap(), b"two");
        assert_eq!(image.entries.len(), 1, "no temporary file left");
    }
}
