//! The blob store: content-addressed files under `blobs/`, and the staging
//! files of uploads: a session's under `uploads/`, a one-shot upload's (a
//! whole blob in one request) beside the blob's final name
//! (`<hex>.<upload id>.staging`), so that concurrent pushes do not all
//! create files in one directory and the commit is a rename within one.
//!
//! Commit order (the log depends on it): the staging file is written and
//! fsynced, renamed to `blobs/<alg>/<2 hex>/<hex>`, the directory fsynced,
//! and only then is the event logged. So an event never names a missing
//! file; a crash in between leaves an orphan file, which is harmless.
//!
//! A session's staging file (`uploads/<id>`) holds acknowledged chunks, so
//! its closing step links it into the store instead of renaming it
//! ([`BlobStore::link_staging`]): the staging name goes only after the
//! completion is logged. A crash in between leaves the upload resumable at
//! its logged size (startup gives it a private copy of those bytes, see
//! `reconcile`), never an upload whose acknowledged bytes are gone.
//!
//! A chunk of an upload is fsynced, and the first one also fsyncs
//! `uploads/` (the staging file's name), before its event is logged: an
//! acknowledged chunk survives power loss.
//!
//! The 256 prefix directories of sha256 blobs are made (durably) at
//! startup ([`BlobStore::prepare_dirs`]), so a commit does not create or
//! fsync a directory; one missing later is made on the commit's way.
//!
//! Every change goes through the store's [`FileSystem`] seam.
//!
//! A blob's commit (rename into the store, then logging the link) and its
//! deletion by garbage collection (logging the deletion, then removing the
//! file) never interleave: both hold the digest's lock ([`DigestLocks`]).
//!
//! Boundary: paths are built only from a validated [`Digest`] or an upload
//! id this module generated and validated (32 lower-case hex digits).

pub mod cache;
pub mod local_cache;
pub mod object;
pub mod read;
pub mod stream;

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use self::cache::SmallBlobCache;
use self::local_cache::{FillPermit, LocalCache};
use crate::datadir::Layout;
use crate::fsutil::{create_dir_all_durable_with, ensure_dir_durable_with};
use crate::oci::{Digest, DigestAlgorithm, Hasher};
use crate::storage::{self, FileHandle, FileSystem, Fs, OpenMode};

/// Size of the buffers used to read and write blob bytes.
pub const IO_BUFFER_BYTES: usize = 1024 * 1024;

/// A staging file's dirty pages are handed to the disk each time this
/// much more was written to it ([`FileHandle::start_writeback`]).
pub const WRITEBACK_STEP_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs_dir: PathBuf,
    uploads_dir: PathBuf,
    fs: Fs,
    /// Directories under `blobs/` this process has seen durable (created
    /// and their parent fsynced, or fsynced after it found them).
    durable_dirs: Arc<Mutex<HashSet<PathBuf>>>,
    locks: Arc<DigestLocks>,
    small_blobs: Arc<SmallBlobCache>,
    /// One-shot staging files being written by this process: garbage
    /// collection, which removes those a crash left behind, skips these.
    one_shot_in_progress: Arc<Mutex<HashSet<PathBuf>>>,
    /// Where blob bytes live; the digest locks, the small-blob cache and
    /// the staging files of sessions stay here whichever it is.
    backend: Backend,
    /// Small blobs of the object backend kept on the local disk.
    local_cache: Option<Arc<LocalCache>>,
}

/// Where the bytes of a blob to keep in the local-disk cache are
/// ([`BlobStore::spawn_local_fill`]).
#[derive(Debug)]
pub enum FillSource {
    /// The whole blob, in memory.
    Bytes(Vec<bytes::Bytes>),
    /// A file holding exactly the whole blob (an upload's staging file),
    /// moved into the cache, or removed if it is not kept.
    File(PathBuf),
}

/// Where blob bytes live (`[storage] backend`). The one place the choice
/// is recorded: callers go through [`BlobStore`]'s methods, or through the
/// API's upload and read paths, which dispatch on it once
/// (`api::uploads::Receiver`, `api::blobs`).
#[derive(Debug, Clone)]
pub enum Backend {
    /// Files under `<data>/blobs/`.
    Filesystem,
    /// Objects in an S3-compatible store.
    Object(object::SharedObjectBlobs),
}

/// The path of a one-shot staging file an upload is writing
/// ([`BlobStore::one_shot_staging_path`]); registered as in progress
/// until dropped, so garbage collection does not take it for a leftover.
#[derive(Debug)]
pub struct OneShotStaging {
    path: PathBuf,
    in_progress: Arc<Mutex<HashSet<PathBuf>>>,
}

impl std::ops::Deref for OneShotStaging {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for OneShotStaging {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for OneShotStaging {
    fn drop(&mut self) {
        self.in_progress.lock().remove(&self.path);
    }
}

/// Striped per-digest locks: a digest maps to one of
/// [`DIGEST_LOCK_STRIPES`] async mutexes. The upload path holds one from
/// before its file is committed until its link is logged; the collector
/// holds those of a batch from before its deletions are planned until
/// their files are removed. Several stripes are always taken in ascending
/// order, so two holders cannot deadlock.
pub struct DigestLocks {
    stripes: Vec<Arc<tokio::sync::Mutex<()>>>,
}

/// Number of stripes of [`DigestLocks`].
pub const DIGEST_LOCK_STRIPES: usize = 1024;

/// A held digest lock (or several).
pub type DigestGuard = Vec<tokio::sync::OwnedMutexGuard<()>>;

impl std::fmt::Debug for DigestLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DigestLocks({} stripes)", self.stripes.len())
    }
}

impl Default for DigestLocks {
    fn default() -> Self {
        DigestLocks {
            stripes: (0..DIGEST_LOCK_STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
        }
    }
}

impl DigestLocks {
    fn stripe(&self, digest: &Digest) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        digest.hash(&mut h);
        (h.finish() % self.stripes.len() as u64) as usize
    }

    /// Locks the stripes of every digest in `digests`, in ascending order.
    pub async fn lock<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> DigestGuard {
        let mut stripes: Vec<usize> = digests.into_iter().map(|d| self.stripe(d)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].clone().lock_owned().await);
        }
        guards
    }
}

/// The suffix of one-shot staging files (`<hex>.<upload id>.staging`).
pub const ONE_SHOT_STAGING_SUFFIX: &str = ".staging";

/// The hex digest a file name of a one-shot staging file starts with
/// (`<hex>.<upload id>.staging`), or `None` for any other name.
pub fn staging_leftover_digest(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(ONE_SHOT_STAGING_SUFFIX)?;
    let (hex, id) = stem.split_once('.')?;
    is_upload_id(id).then_some(hex)
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
        BlobStore::new_with_fs(layout, storage::real())
    }

    /// A store whose every change goes through `fs`.
    pub fn new_with_fs(layout: &Layout, fs: Fs) -> BlobStore {
        BlobStore {
            blobs_dir: layout.blobs_dir(),
            uploads_dir: layout.uploads_dir(),
            fs,
            durable_dirs: Arc::default(),
            locks: Arc::new(DigestLocks::default()),
            small_blobs: Arc::default(),
            one_shot_in_progress: Arc::default(),
            backend: Backend::Filesystem,
            local_cache: None,
        }
    }

    /// This store with a local-disk cache of small blobs (the object
    /// backend's; see [`local_cache`]).
    pub fn with_local_cache(mut self, cache: Arc<LocalCache>) -> BlobStore {
        self.local_cache = Some(cache);
        self
    }

    /// The local-disk cache of small blobs, when there is one.
    pub fn local_cache(&self) -> Option<&Arc<LocalCache>> {
        self.local_cache.as_ref()
    }

    /// Keeps the blob `digest` in the local-disk cache, in the
    /// background: its bytes are verified and written (or its file moved)
    /// aside, then renamed into place under the digest's lock if the
    /// state still has the blob at that size; so a collection that
    /// deletes it cannot leave its file behind. `permit`, if any, is held
    /// until then. Without a cache, a file source is removed.
    pub fn spawn_local_fill(
        &self,
        state: &Arc<parking_lot::RwLock<crate::projection::State>>,
        digest: Digest,
        source: FillSource,
        permit: Option<FillPermit>,
    ) {
        let Some(cache) = self.local_cache.clone() else {
            if let FillSource::File(path) = source {
                // Not waited for: the file is only in the way.
                drop(tokio::task::spawn_blocking(move || remove_files(&[path])));
            }
            return;
        };
        let (locks, state) = (self.locks.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let d = digest.clone();
            let c = cache.clone();
            let prepared = tokio::task::spawn_blocking(move || match source {
                FillSource::Bytes(pieces) => c.prepare_bytes(&d, &pieces),
                FillSource::File(path) => c.prepare_file(&d, &path).inspect_err(|_| {
                    let _ = remove_files(&[path]);
                }),
            })
            .await;
            let prepared = match prepared {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(%digest, error = %e, "blob not kept in the local cache");
                    return;
                }
                Err(_) => return,
            };
            let _guard = locks.lock([&digest]).await;
            if state.read().blobs.get(&digest) != Some(&prepared.size()) {
                return; // deleted meanwhile: dropping `prepared` removes it
            }
            let committed = tokio::task::spawn_blocking(move || cache.commit(prepared)).await;
            if let Ok(Err(e)) = committed {
                tracing::warn!(%digest, error = %e, "blob not kept in the local cache");
            }
        });
    }

    /// This store with its blob bytes in `objects`.
    pub fn with_objects(mut self, objects: object::SharedObjectBlobs) -> BlobStore {
        self.backend = Backend::Object(objects);
        self
    }

    /// Where blob bytes live. Only the backend-specific paths match on it
    /// (uploads, reads, the collector's leftovers); everything else asks
    /// the store's methods.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Why blob writes cannot be served now (the object store is down),
    /// or `None`. The filesystem is never unavailable this way: its
    /// failures are errors of the request that met them.
    pub fn unavailable_reason(&self) -> Option<String> {
        match &self.backend {
            Backend::Filesystem => None,
            Backend::Object(objects) => objects.unavailable_reason(),
        }
    }

    /// The object keys of those `digests` whose bytes are objects (none on
    /// the filesystem, where a blob's path follows from its digest). Read
    /// before their deletion is logged, which takes them off the state.
    pub fn object_keys<'a>(
        &self,
        state: &crate::projection::State,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> std::collections::HashMap<Digest, String> {
        match &self.backend {
            Backend::Filesystem => Default::default(),
            Backend::Object(_) => digests
                .into_iter()
                .filter_map(|d| Some((d.clone(), state.objects.blobs.get(d)?.clone())))
                .collect(),
        }
    }

    /// Removes the bytes of blobs whose deletion is durable in the log:
    /// their files (and local-cache copies, before their objects), and
    /// their objects (`keys`, from [`BlobStore::object_keys`]). An object that cannot be deleted now
    /// is off the record already: an orphan, which the next collection
    /// removes.
    pub async fn remove_collected(
        &self,
        digests: &[Digest],
        keys: &std::collections::HashMap<Digest, String>,
    ) -> io::Result<()> {
        let mut paths: Vec<PathBuf> = digests.iter().map(|d| self.blob_path(d)).collect();
        if let Some(cache) = &self.local_cache {
            // Before the objects: a cached copy never outlives its blob.
            for d in digests {
                cache.forget(d);
                paths.push(cache.path_of(d));
            }
        }
        tokio::task::spawn_blocking(move || remove_files(&paths))
            .await
            .map_err(io::Error::other)??;
        if let Backend::Object(objects) = &self.backend {
            for key in digests.iter().filter_map(|d| keys.get(d)) {
                if let Err(e) = objects.delete(key).await {
                    tracing::warn!(%key, error = %e, "cannot delete a collected blob's object");
                }
            }
        }
        Ok(())
    }

    /// This store with a cache of small blobs of at most `bytes_max` bytes
    /// (0: none) instead of the default's.
    pub fn with_small_blob_cache(mut self, bytes_max: usize) -> BlobStore {
        self.small_blobs = Arc::new(SmallBlobCache::with_capacity(bytes_max));
        self
    }

    /// The cache of small blobs shared by every clone of this store.
    pub fn small_blobs(&self) -> &SmallBlobCache {
        &self.small_blobs
    }

    /// The per-digest locks shared by every clone of this store.
    pub fn locks(&self) -> &DigestLocks {
        &self.locks
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

    /// The staging file of a one-shot upload of `digest` (a whole blob in
    /// one request): beside the blob's final name, so that creating it
    /// spreads over the prefix directories instead of contending for
    /// `uploads/`, and its commit is a rename within one directory.
    /// Named `<hex>.<id>.staging`; garbage collection removes one left
    /// behind by a crash ([`staging_leftover_digest`]).
    ///
    /// # Panics (debug)
    /// If `id` is not an upload id.
    pub fn one_shot_staging_path(&self, digest: &Digest, id: &str) -> OneShotStaging {
        debug_assert!(is_upload_id(id), "upload ids are generated or validated");
        let mut path = self.blob_path(digest);
        path.set_file_name(format!("{}.{id}{ONE_SHOT_STAGING_SUFFIX}", digest.hex()));
        // Registered before the file exists: a collection that lists it
        // finds it in progress.
        self.one_shot_in_progress.lock().insert(path.clone());
        OneShotStaging {
            path,
            in_progress: self.one_shot_in_progress.clone(),
        }
    }

    /// Whether `path` is a one-shot staging file an upload of this process
    /// is still writing.
    pub fn is_one_shot_in_progress(&self, path: &Path) -> bool {
        self.one_shot_in_progress.lock().contains(path)
    }

    /// Opens a new one-shot staging file for `digest`
    /// ([`BlobStore::one_shot_staging_path`]), making its directory first
    /// if it is missing.
    pub fn open_one_shot_staging(&self, path: &Path) -> io::Result<StagingWriter> {
        let dir = path.parent().expect("staging paths have a parent");
        self.ensure_durable_dir(dir)?;
        self.open_staging(path, 0)
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
    ///
    /// Either way the blob's name is durable when this returns: the
    /// directory is fsynced even when the file was already there, since a
    /// concurrent commit may have renamed it and not fsynced yet.
    pub fn commit(&self, staging: &Path, digest: &Digest) -> io::Result<()> {
        let target = self.blob_path(digest);
        let dir = target.parent().expect("blob paths have a parent");
        self.ensure_durable_dir(dir)?;
        if target.exists() {
            self.fs.remove_file(staging)?;
            return self.fs.sync_dir(dir);
        }
        match self.fs.rename(staging, &target) {
            // The directory went away after it was made durable (removed
            // by hand): make it again, durably, and retry once.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.is_dir() => {
                self.durable_dirs.lock().remove(dir);
                self.ensure_durable_dir(dir)?;
                self.fs.rename(staging, &target)?;
            }
            other => other?,
        }
        self.fs.sync_dir(dir)
    }

    /// Creates the prefix directories of sha256 blobs (`blobs/sha256/00`
    /// to `ff`) that are missing and makes all of them durable, so that
    /// committing a blob neither creates nor fsyncs a directory (other
    /// algorithms still get theirs on first use). Two directory fsyncs
    /// when none was missing: a directory found here may have been
    /// created by a process killed before it fsynced the parent.
    pub fn prepare_dirs(&self) -> io::Result<()> {
        let alg_dir = self.blobs_dir.join(DigestAlgorithm::Sha256.name());
        create_dir_all_durable_with(&*self.fs, &alg_dir)?;
        let prefixes: Vec<PathBuf> = (0..=u8::MAX)
            .map(|b| alg_dir.join(format!("{b:02x}")))
            .collect();
        for dir in &prefixes {
            if dir.is_dir() {
                continue;
            }
            match self.fs.create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        self.fs.sync_dir(&alg_dir)?;
        self.fs.sync_dir(&self.blobs_dir)?;
        let mut durable = self.durable_dirs.lock();
        durable.insert(alg_dir);
        durable.extend(prefixes);
        Ok(())
    }

    /// Fsyncs a one-shot staging file just written and commits it as
    /// `digest` (the closing step of a whole blob in one request).
    pub fn commit_staging(&self, writer: StagingWriter, digest: &Digest) -> io::Result<()> {
        writer.file.sync_all()?;
        let path = writer.path.clone();
        drop(writer);
        self.commit(&path, digest)
    }

    /// Fsyncs a session's staging file just written and gives it a second,
    /// durable name in the store as `digest`, keeping the staging name (the
    /// closing step of a chunked upload). Until the completion is logged
    /// the upload stays resumable: its acknowledged bytes are still under
    /// the staging name. The caller removes that name once the completion
    /// is logged, or brings the file back to the logged size
    /// ([`BlobStore::restore_staging`]) if it could not be logged. When the
    /// store already has the blob (a concurrent upload of the same
    /// content), nothing is linked; its name is made durable all the same.
    pub fn link_staging(&self, writer: StagingWriter, digest: &Digest) -> io::Result<()> {
        writer.file.sync_all()?;
        let staging = writer.path.clone();
        drop(writer);
        let target = self.blob_path(digest);
        let dir = target.parent().expect("blob paths have a parent");
        self.ensure_durable_dir(dir)?;
        if !target.exists() {
            match self.fs.hard_link(&staging, &target) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                // The directory went away after it was made durable
                // (removed by hand): make it again, durably, and retry once.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.is_dir() => {
                    self.durable_dirs.lock().remove(dir);
                    self.ensure_durable_dir(dir)?;
                    self.fs.hard_link(&staging, &target)?;
                }
                other => other?,
            }
        }
        self.fs.sync_dir(dir)
    }

    /// Brings a session's staging file back to its first `len` bytes, what
    /// the log acknowledged. A file that is also a blob's name (a closing
    /// step linked it and its completion was not logged) is not cut in
    /// place, which would cut the blob: its first `len` bytes are copied
    /// to a new file that replaces the staging name, durably. Any other
    /// is cut (or left, when it has `len` bytes) and fsynced.
    pub fn restore_staging(&self, path: &Path, len: u64) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if link_count(&meta) <= 1 {
            if meta.len() != len {
                let file = self.fs.open(path, OpenMode::Existing)?;
                file.set_len(len)?;
                file.sync_all()?;
            }
            return Ok(());
        }
        // `uploads/<id>.copy` is no upload id: if the power goes before
        // the rename, startup removes it and finds the linked file again.
        let copy = path.with_extension("copy");
        let out = self.fs.open(&copy, OpenMode::CreateTruncate)?;
        let mut source = File::open(path)?;
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let n = source.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "staging file shorter than the upload",
                ));
            }
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        out.sync_all()?;
        drop(out);
        self.fs.rename(&copy, path)?;
        self.fs
            .sync_dir(path.parent().expect("staging paths have a parent"))
    }

    /// Removes a session's staging name once its completion is logged (the
    /// blob keeps the file under its own name). Not made durable: a name
    /// that comes back after a crash belongs to no open upload, and
    /// startup removes it.
    pub fn remove_staging(&self, path: &Path) -> io::Result<()> {
        match self.fs.remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Writes `tail`, bytes `at..` of an upload whose staging file holds
    /// `offset` acknowledged bytes, and makes it durable (the file's bytes,
    /// and its name when it is new) before the chunk is logged. In an
    /// object store an upload's staging file holds only its tail, the
    /// bytes not yet in a part, at their place in the upload: bytes in
    /// parts are a hole. `at` is at or past `offset`, so acknowledged bytes
    /// are never overwritten; anything past `offset` was never
    /// acknowledged and goes first.
    pub fn write_tail(&self, path: &Path, offset: u64, at: u64, tail: &[u8]) -> io::Result<()> {
        debug_assert!(
            at >= offset,
            "a tail write never touches acknowledged bytes"
        );
        let existed = path.exists();
        let file = self.fs.open(path, OpenMode::CreateKeep)?;
        if file.len()? > offset {
            file.set_len(offset)?;
        }
        file.seek(at)?;
        file.write_all(tail)?;
        let end = at + tail.len() as u64;
        if file.len()? < end {
            file.set_len(end)?;
        }
        file.sync_all()?;
        if !existed {
            self.fs.sync_dir(&self.uploads_dir)?;
        }
        Ok(())
    }

    /// Makes a chunk just written to a staging file durable, before its
    /// event is logged: the file's bytes, and for the first chunk (at
    /// `offset` 0, when the file was created) its name in `uploads/`.
    pub fn make_chunk_durable(&self, file: &dyn FileHandle, offset: u64) -> io::Result<()> {
        file.sync_all()?;
        if offset == 0 {
            self.fs.sync_dir(&self.uploads_dir)?;
        }
        Ok(())
    }

    /// Opens (creating if needed) a staging file through the store's file
    /// system (see [`StagingWriter::open_at`]). A file still linked to a
    /// blob (a closing step whose completion failed to be logged, and
    /// whose restoring failed too) first gets a private copy of its
    /// `offset` bytes: writing through to the blob would change it.
    pub fn open_staging(&self, path: &Path, offset: u64) -> io::Result<StagingWriter> {
        if std::fs::metadata(path).is_ok_and(|m| link_count(&m) > 1) {
            self.restore_staging(path, offset)?;
        }
        StagingWriter::open_at_with(&*self.fs, path, offset)
    }

    /// Makes `dir` (a directory of the store, below `blobs/`) and its
    /// parents up to `blobs/` durable, once per process.
    fn ensure_durable_dir(&self, dir: &Path) -> io::Result<()> {
        let mut chain = Vec::new();
        let mut d = dir;
        while d != self.blobs_dir {
            chain.push(d.to_path_buf());
            match d.parent() {
                Some(p) if p.starts_with(&self.blobs_dir) => d = p,
                _ => break,
            }
        }
        for d in chain.into_iter().rev() {
            if self.durable_dirs.lock().contains(&d) {
                continue;
            }
            ensure_dir_durable_with(&*self.fs, &d)?;
            self.durable_dirs.lock().insert(d);
        }
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

/// Removes `paths`; one already gone is not an error.
pub fn remove_files(paths: &[PathBuf]) -> io::Result<()> {
    for p in paths {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// How many names the file of `meta` has (1 where hard links are unknown).
pub fn link_count(meta: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.nlink()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        1
    }
}

/// An open staging file being appended to, with the running checksums of
/// what was written through it.
pub struct StagingWriter {
    pub file: Box<dyn FileHandle>,
    pub path: PathBuf,
    pub written: u64,
    pub crc: crc32fast::Hasher,
}

impl StagingWriter {
    /// Opens (creating if needed) the staging file and positions it at
    /// `offset`, cutting off anything after it: bytes past the last logged
    /// chunk were never acknowledged.
    pub fn open_at(path: &Path, offset: u64) -> io::Result<StagingWriter> {
        StagingWriter::open_at_with(&*storage::real(), path, offset)
    }

    /// [`StagingWriter::open_at`] through `fs`.
    pub fn open_at_with(
        fs: &dyn FileSystem,
        path: &Path,
        offset: u64,
    ) -> io::Result<StagingWriter> {
        let file = fs.open(path, OpenMode::CreateKeep)?;
        let len = file.len()?;
        if len < offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("staging file has {len} bytes, the log acknowledged {offset}"),
            ));
        }
        if len > offset {
            file.set_len(offset)?;
        }
        file.seek(offset)?;
        Ok(StagingWriter {
            file,
            path: path.to_owned(),
            written: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.crc.update(bytes);
        let before = self.written;
        self.written += bytes.len() as u64;
        // Start the disk on what was written so far every few MiB, so the
        // sync that ends the chunk or the upload finds little left to do.
        if before / WRITEBACK_STEP_BYTES != self.written / WRITEBACK_STEP_BYTES {
            self.file.start_writeback()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    fn staged(store: &BlobStore, bytes: &[u8]) -> (StagingWriter, Digest) {
        let path = store.staging_path(&new_upload_id());
        let mut w = store.open_staging(&path, 0).unwrap();
        w.write(bytes).unwrap();
        (w, Digest::sha256_of(bytes))
    }

    #[test]
    fn prepared_prefix_directories_are_durable() {
        let root = tempfile::tempdir().unwrap();
        let sim = SimFs::new(root.path()).unwrap();
        let layout = Layout::new(root.path());
        let fs: Fs = Arc::new(sim.clone());
        crate::fsutil::create_dir_all_durable_with(&*fs, &layout.uploads_dir()).unwrap();
        let store = BlobStore::new_with_fs(&layout, fs);
        store.prepare_dirs().unwrap();
        let out = tempfile::tempdir().unwrap();
        sim.durable_image().materialize(out.path()).unwrap();
        for prefix in ["00", "7f", "ff"] {
            assert!(out.path().join("blobs/sha256").join(prefix).is_dir());
        }
    }

    #[test]
    fn a_missing_prefix_directory_is_made_again_by_the_commit() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        std::fs::create_dir_all(layout.uploads_dir()).unwrap();
        let store = BlobStore::new(&layout);
        store.prepare_dirs().unwrap();
        let (w, digest) = staged(&store, b"some bytes");
        let dir = store.blob_path(&digest).parent().unwrap().to_owned();
        std::fs::remove_dir(&dir).unwrap();
        store.commit_staging(w, &digest).unwrap();
        assert_eq!(
            std::fs::read(store.blob_path(&digest)).unwrap(),
            b"some bytes"
        );
    }
}
