//! The blob store: content-addressed files under `blobs/`, and the staging
//! files of uploads under `uploads/`.
//!
//! Commit order (the log depends on it): the staging file is written and
//! fsynced, renamed to `blobs/<alg>/<2 hex>/<hex>`, the directory fsynced,
//! and only then is the event logged. So an event never names a missing
//! file; a crash in between leaves an orphan file, which is harmless.
//!
//! Boundary: paths are built only from a validated [`Digest`] or an upload
//! id this module generated and validated (32 lower-case hex digits).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::datadir::Layout;
use crate::fsutil::{create_dir_all_durable, fsync_dir};
use crate::oci::{Digest, DigestAlgorithm, Hasher};

/// Size of the buffers used to read and write blob bytes.
pub const IO_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs_dir: PathBuf,
    uploads_dir: PathBuf,
}

/// Whether `s` is an upload id this store could have generated.
pub fn is_upload_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn new_upload_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl BlobStore {
    pub fn new(layout: &Layout) -> BlobStore {
        BlobStore {
            blobs_dir: layout.blobs_dir(),
            uploads_dir: layout.uploads_dir(),
        }
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs_dir
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// The staging file of an upload (or of a one-shot upload's temporary).
    ///
    /// # Panics (debug)
    /// If `id` is not an upload id.
    pub fn staging_path(&self, id: &str) -> PathBuf {
        debug_assert!(is_upload_id(id), "upload ids are validated before use");
        self.uploads_dir.join(id)
    }

    pub fn uploads_dir(&self) -> &Path {
        &self.uploads_dir
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.blobs_dir
    }

    /// Moves a verified, fsynced staging file into the store as `digest`.
    /// When the store already has the blob (a concurrent upload of the same
    /// content), the staging file is removed instead: content-addressed
    /// files with the same name have the same bytes.
    pub fn commit(&self, staging: &Path, digest: &Digest) -> io::Result<()> {
        let target = self.blob_path(digest);
        let dir = target.parent().expect("blob paths have a parent");
        create_dir_all_durable(dir)?;
        if target.exists() {
            fs::remove_file(staging)?;
            return Ok(());
        }
        fs::rename(staging, &target)?;
        fsync_dir(dir)?;
        Ok(())
    }

    /// Hashes the first `len` bytes of a staging file (an upload resumed
    /// after a restart has no hasher in memory).
    pub fn hash_file_prefix(
        path: &Path,
        len: u64,
        algorithm: DigestAlgorithm,
    ) -> io::Result<Hasher> {
        let mut f = File::open(path)?;
        let mut hasher = algorithm.hasher();
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "staging file shorter than the upload",
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(hasher)
    }
}

/// An open staging file being appended to, with the running checksums of
/// what was written through it.
pub struct StagingWriter {
    pub file: File,
    pub written: u64,
    pub crc: crc32fast::Hasher,
}

impl StagingWriter {
    /// Opens (creating if needed) the staging file and positions it at
    /// `offset`, cutting off anything after it: bytes past the last logged
    /// chunk were never acknowledged.
    pub fn open_at(path: &Path, offset: u64) -> io::Result<StagingWriter> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("staging file has {len} bytes, the log acknowledged {offset}"),
            ));
        }
        if len > offset {
            file.set_len(offset)?;
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok(StagingWriter {
            file,
            written: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}
