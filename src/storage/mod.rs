//! The file-system seam: every call that changes a file or a directory on
//! the durable path (the log, snapshots, blob commits and upload staging
//! files) goes through [`FileSystem`], so tests can swap in a file system
//! that forgets what was never made durable, tears writes and fails on
//! demand ([`sim::SimFs`]).
//!
//! The seam is narrow on purpose: create/open for writing, write, truncate,
//! fsync, rename, hard link, remove, create a directory, fsync a directory. Reads go
//! straight to `std::fs` (and memory maps): the simulated file system
//! writes through to real files, which then show what the page cache would.
//!
//! Production uses [`RealFs`]: one virtual call in front of each system
//! call, nothing else (the log's hot path is one `write_all` and one
//! `fdatasync` per group commit).
//!
//! Boundary: code that must survive power loss takes an [`Fs`] and never
//! calls `std::fs` to change anything itself.

pub mod sim;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A shared handle on a file system.
pub type Fs = Arc<dyn FileSystem>;

/// How [`FileSystem::open`] opens a file for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file, or truncate it to zero bytes; writes start at 0.
    CreateTruncate,
    /// Create the file if it is missing, keep what it holds; writes start
    /// at 0 (use [`FileHandle::seek`]).
    CreateKeep,
    /// An existing file; writes start at 0 (use [`FileHandle::seek`]).
    Existing,
    /// An existing file; every write goes to its end (`O_APPEND`).
    Append,
}

/// The operations that change files and directories.
pub trait FileSystem: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FileHandle>>;
    /// Atomically replaces `to` with `from`. Durable after
    /// [`FileSystem::sync_dir`] of `to`'s directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes `link` a second name of the file `original` (which keeps its
    /// own): a new directory entry, durable after [`FileSystem::sync_dir`]
    /// of `link`'s directory. Fails if `link` exists.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes one name of a file (the file lives on under any other).
    /// Durable after [`FileSystem::sync_dir`] of the file's directory.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory (its parent must exist). Durable after
    /// [`FileSystem::sync_dir`] of the parent.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (created, renamed, removed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file open for writing. Methods take `&self`, as `std::fs::File`'s do.
#[allow(clippy::len_without_is_empty)] // a file's length, fallible, as `Metadata::len`
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// Writes all of `bytes` at the handle's position (at the end of the
    /// file for [`OpenMode::Append`]) and moves the position past them. On
    /// an error, a prefix of `bytes` may have been written.
    fn write_all(&self, bytes: &[u8]) -> io::Result<()>;
    /// Moves the position to `offset` from the start.
    fn seek(&self, offset: u64) -> io::Result<()>;
    /// Truncates or extends the file. Durable after a sync.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the data, and the length when it changed, are durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: data and metadata are durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Starts writing the file's dirty pages to the disk without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux), so a later
    /// sync has less left to do. A hint: it makes nothing durable, and the
    /// default does nothing.
    fn start_writeback(&self) -> io::Result<()> {
        Ok(())
    }
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

/// The process-wide [`RealFs`].
pub fn real() -> Fs {
    static REAL: OnceLock<Fs> = OnceLock::new();
    REAL.get_or_init(|| Arc::new(RealFs)).clone()
}

impl FileSystem for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FileHandle>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::CreateTruncate => options.write(true).create(true).truncate(true),
            OpenMode::CreateKeep => options.write(true).create(true).truncate(false),
            OpenMode::Existing => options.write(true),
            OpenMode::Append => options.append(true),
        };
        Ok(Box::new(RealFile(options.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        std::fs::hard_link(original, link)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
struct RealFile(File);

impl FileHandle for RealFile {
    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        (&self.0).write_all(bytes)
    }

    fn seek(&self, offset: u64) -> io::Result<()> {
        (&self.0).seek(SeekFrom::Start(offset)).map(|_| ())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor this handle owns;
        // offset 0 and length 0 mean the whole file.
        let rc =
            unsafe { libc::sync_file_range(self.0.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// `Write + Seek` over a [`FileHandle`], for encoders that stream into a
/// file and patch a header at the end. Only seeks from the start.
#[derive(Debug)]
pub struct HandleWriter<'a> {
    handle: &'a dyn FileHandle,
    position: u64,
}

impl<'a> HandleWriter<'a> {
    /// `handle` must be positioned at 0.
    pub fn new(handle: &'a dyn FileHandle) -> HandleWriter<'a> {
        HandleWriter {
            handle,
            position: 0,
        }
    }
}

impl Write for HandleWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.handle.write_all(buf)?;
        self.position += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for HandleWriter<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(o) => o,
            SeekFrom::Current(0) => self.position,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "HandleWriter only seeks from the start",
                ))
            }
        };
        self.handle.seek(target)?;
        self.position = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_files_append_seek_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let fs = real();
        let p = dir.path().join("f");
        let f = fs.open(&p, OpenMode::CreateTruncate).unwrap();
        f.write_all(b"hello").unwrap();
        f.start_writeback().unwrap();
        f.sync_all().unwrap();
        let a = fs.open(&p, OpenMode::Append).unwrap();
        a.write_all(b" world").unwrap();
        a.sync_data().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        let w = fs.open(&p, OpenMode::Existing).unwrap();
        w.seek(0).unwrap();
        w.write_all(b"J").unwrap();
        w.set_len(5).unwrap();
        assert_eq!(w.len().unwrap(), 5);
        assert_eq!(std::fs::read(&p).unwrap(), b"Jello");
        fs.rename(&p, &dir.path().join("g")).unwrap();
        fs.hard_link(&dir.path().join("g"), &dir.path().join("h"))
            .unwrap();
        assert!(fs
            .hard_link(&dir.path().join("g"), &dir.path().join("h"))
            .is_err());
        fs.sync_dir(dir.path()).unwrap();
        fs.remove_file(&dir.path().join("g")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"Jello");
        fs.remove_file(&dir.path().join("h")).unwrap();
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
