//! The data directory: its layout and the lock that keeps a second process
//! out.
//!
//! ```text
//! <data>/LOCK                          flock'ed while a process owns the directory
//! <data>/log/<first seq>.log           log segments
//! <data>/snapshots/<seq>.snap          snapshots
//! <data>/blobs/<alg>/<2 hex>/<hex>     blob bytes, content-addressed
//! <data>/blobs/<alg>/<2 hex>/<hex>.<upload id>.staging
//!                                      staging files of one-shot uploads
//! <data>/uploads/<upload id>           staging files of upload sessions
//! <data>/blobcache/<alg>/<2 hex>/<hex> small blobs of the object backend,
//!                                      kept locally (`blobs::local_cache`)
//! <data>/blobcache/tmp/<random>.tmp    cache fills being written
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir_all_durable_with, ensure_dir_durable_with};
use crate::storage::{self, FileSystem};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {0} is in use by another process (its LOCK file is locked)")]
    Locked(PathBuf),
    #[error("cannot prepare data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// An open, locked data directory. The lock is released on drop.
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

/// Paths inside a data directory, usable without holding the lock (for
/// read-only tools).
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// One cursor file per notification endpoint (see `notify::cursor`).
    pub fn notifications_dir(&self) -> PathBuf {
        self.root.join("notifications")
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("LOCK")
    }
}

impl DataDir {
    /// Creates the directory tree if needed and takes the lock.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        DataDir::open_with_fs(root, &*storage::real())
    }

    /// [`DataDir::open`], with the directories made through `fs`.
    ///
    /// The four directories are made durable even when they exist: a
    /// process killed after making one and before fsyncing the data
    /// directory leaves a name only the page cache knows, and what this
    /// process then writes in it would go with the next power cut.
    pub fn open_with_fs(root: &Path, fs: &dyn FileSystem) -> Result<DataDir, DataDirError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DataDirError::Io { path, source }
        };
        let layout = Layout::new(root);
        create_dir_all_durable_with(fs, root).map_err(io_err(root))?;
        let lock_path = layout.lock_path();
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(DataDirError::Locked(root.to_owned())),
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        for dir in [
            layout.log_dir(),
            layout.snapshots_dir(),
            layout.blobs_dir(),
            layout.uploads_dir(),
        ] {
            ensure_dir_durable_with(fs, &dir).map_err(io_err(&dir))?;
        }
        Ok(DataDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.root)
    }
}

#[cfg(test)]
mod durability_tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn directories_found_but_not_durable_are_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir(&root).unwrap();
        let sim = SimFs::new(dir.path()).unwrap();
        // A process killed after making the directories and before
        // fsyncing data/.
        for sub in ["log", "snapshots", "blobs", "uploads"] {
            sim.create_dir(&root.join(sub)).unwrap();
        }
        assert!(!sim
            .durable_image()
            .entries
            .contains_key(Path::new("data/log")));
        let _data = DataDir::open_with_fs(&root, &sim).unwrap();
        let image = sim.durable_image();
        for sub in ["log", "snapshots", "blobs", "uploads"] {
            assert!(
                image.entries.contains_key(&Path::new("data").join(sub)),
                "data/{sub} is durable"
            );
        }
    }
}
