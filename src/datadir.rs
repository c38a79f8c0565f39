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
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::create_dir_all_durable;

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
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DataDirError::Io { path, source }
        };
        let layout = Layout::new(root);
        create_dir_all_durable(root).map_err(io_err(root))?;
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
            create_dir_all_durable(&dir).map_err(io_err(&dir))?;
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
