//! A bounded cache of small blobs on the local disk, for the object-store
//! backend (`[storage] backend = "s3"`): a blob kept here is served as
//! the filesystem backend serves its files (`blobs::read`), with no
//! request to the store.
//!
//! ```text
//! <data>/blobcache/<alg>/<2 hex>/<hex>   a blob's bytes, nothing else
//! <data>/blobcache/tmp/<random>.tmp      a fill being written
//! ```
//!
//! A cache file has no header: it is exactly the blob's bytes, named by
//! its digest. Filled two ways, both verified before the name appears:
//! - an upload that ends as one object with no multipart upload: its
//!   staging file, which holds the whole blob, is renamed here (no copy)
//!   once the completion is logged; or the bytes of a one-request upload,
//!   already in memory, are written here;
//! - the first whole read of a blob from the store: the bytes streamed to
//!   the client are also kept, and written here once all have come.
//!
//! Every fill hashes the bytes it keeps and compares the digest before
//! it renames the file into place; its name is not made durable (a name
//! lost to a crash is only a miss). From then on this process trusts the
//! file, as the filesystem backend trusts its blob files (no hash on
//! every read: 10 µs for a 16 KiB blob, as much as the rest of its read).
//! A file of at most `blobs::read::READ_IN_MEMORY_BYTES_MAX` (64 KiB) is
//! not fsynced: after a restart it is hashed on its first read (a file
//! that does not match is removed and the blob fetched from the store),
//! so bytes a crash or power loss spoiled are never served. A larger one
//! is fsynced before its rename and trusted after a restart too.
//!
//! The index (digest, size, last use) is in memory, rebuilt at startup by
//! listing the directory: temporary files are removed, and so are files
//! of blobs the state does not have or whose size differs from the
//! state's. Total bytes stay at most `local_cache_bytes_max`; the least
//! recently used go first.
//!
//! Never serve a blob the state does not have: a GET checks the state
//! first; garbage collection removes a blob's file with the digest's lock
//! held, after its deletion is logged and before its object goes; and a
//! fill renames into place only while holding that lock and only if the
//! state still has the blob.
//!
//! Boundary: paths are built only from a validated [`Digest`] or names
//! this module generated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::read::{read_file_range, BlobRange, READ_IN_MEMORY_BYTES_MAX};
use super::IO_BUFFER_BYTES;
use crate::metrics::{
    LOCAL_CACHE_BYTES, LOCAL_CACHE_EVICTIONS, LOCAL_CACHE_FILLS, LOCAL_CACHE_HITS,
    LOCAL_CACHE_MISSES,
};
use crate::oci::Digest;

/// The cache's directory under the data directory.
pub const LOCAL_CACHE_DIR: &str = "blobcache";

/// Where fills are written before they are renamed into place.
const TMP_DIR: &str = "tmp";

/// Most bytes of fills from reads in flight at once (each holds its
/// blob in memory until it is written): past it, a read is served
/// without filling.
pub const FILL_BYTES_IN_FLIGHT_MAX: u64 = 64 * 1024 * 1024;

/// The local-disk cache of small blobs.
pub struct LocalCache {
    dir: PathBuf,
    tmp_dir: PathBuf,
    bytes_max: u64,
    blob_bytes_max: u64,
    index: Mutex<Index>,
    /// Digests being filled from a read now (one fill per digest), and
    /// their bytes.
    filling: Mutex<(HashSet<Digest>, u64)>,
}

/// # Invariants
/// `by_use` holds each entry of `entries` exactly once, under its `used`
/// tick; `bytes` is the sum of their sizes and at most the cache's
/// `bytes_max` once an insertion has returned.
#[derive(Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    by_use: BTreeMap<u64, Digest>,
    bytes: u64,
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    used: u64,
    /// Its bytes were hashed against its digest by this process (when it
    /// was written, or on its first read since startup).
    verified: bool,
}

impl Index {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert(&mut self, digest: Digest, size: u64, verified: bool) {
        if let Some(old) = self.entries.get(&digest).copied() {
            // Replaced by the same bytes (content addressed): a use.
            self.by_use.remove(&old.used);
            self.bytes -= old.size;
        }
        let used = self.tick();
        self.by_use.insert(used, digest.clone());
        self.entries.insert(
            digest,
            Entry {
                size,
                used,
                verified,
            },
        );
        self.bytes += size;
    }

    fn touch(&mut self, digest: &Digest) {
        let used = self.tick();
        if let Some(e) = self.entries.get_mut(digest) {
            self.by_use.remove(&e.used);
            e.used = used;
            self.by_use.insert(used, digest.clone());
        }
    }

    fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let e = self.entries.remove(digest)?;
        self.by_use.remove(&e.used);
        self.bytes -= e.size;
        Some(e)
    }

    /// Removes the least recently used entries until at most `bytes_max`
    /// bytes are kept; returns them.
    fn evict_to(&mut self, bytes_max: u64) -> Vec<Digest> {
        let mut evicted = Vec::new();
        while self.bytes > bytes_max {
            let Some((_, digest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&digest) {
                self.bytes -= e.size;
            }
            evicted.push(digest);
        }
        debug_assert_eq!(self.entries.len(), self.by_use.len());
        evicted
    }
}

/// A verified file ready to be renamed into the cache
/// ([`LocalCache::commit`]); removed when dropped uncommitted.
#[derive(Debug)]
pub struct Prepared {
    from: PathBuf,
    digest: Digest,
    size: u64,
    committed: bool,
}

impl Prepared {
    /// Bytes of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.from);
        }
    }
}

/// A fill from a read in flight for one digest; ends when dropped.
pub struct FillPermit {
    cache: Arc<LocalCache>,
    digest: Digest,
    size: u64,
}

impl Drop for FillPermit {
    fn drop(&mut self) {
        let mut filling = self.cache.filling.lock();
        filling.0.remove(&self.digest);
        filling.1 -= self.size;
    }
}

/// What opening the cache found in its directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub kept: u64,
    pub kept_bytes: u64,
    /// Temporary files, unknown names, blobs the state does not have or
    /// whose size differs from the state's.
    pub removed: u64,
    /// Kept files evicted because they exceeded the cap.
    pub evicted: u64,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalCache({})", self.dir.display())
    }
}

impl LocalCache {
    /// Opens the cache under `data_dir` (creating its directories),
    /// removing what a previous process left that cannot be trusted, and
    /// rebuilds the index from the files, oldest modified first as least
    /// recently used. `state_size` gives the size the state has for a
    /// digest, `None` for a blob it does not have. Blocking.
    pub fn open(
        data_dir: &Path,
        bytes_max: u64,
        blob_bytes_max: u64,
        state_size: impl Fn(&Digest) -> Option<u64>,
    ) -> io::Result<(LocalCache, OpenReport)> {
        let dir = data_dir.join(LOCAL_CACHE_DIR);
        let tmp_dir = dir.join(TMP_DIR);
        std::fs::create_dir_all(&tmp_dir)?;
        let mut report = OpenReport::default();
        for entry in std::fs::read_dir(&tmp_dir)? {
            std::fs::remove_file(entry?.path())?;
            report.removed += 1;
        }
        // (mtime, digest, size) of every file kept.
        let mut found: Vec<(std::time::SystemTime, Digest, u64)> = Vec::new();
        for alg in std::fs::read_dir(&dir)? {
            let alg = alg?;
            if alg.file_name() == TMP_DIR || !alg.file_type()?.is_dir() {
                continue;
            }
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            for prefix in std::fs::read_dir(alg.path())? {
                let prefix = prefix?;
                if !prefix.file_type()?.is_dir() {
                    std::fs::remove_file(prefix.path())?;
                    report.removed += 1;
                    continue;
                }
                for file in std::fs::read_dir(prefix.path())? {
                    let file = file?;
                    let name = file.file_name().to_string_lossy().into_owned();
                    let meta = file.metadata()?;
                    let digest = Digest::parse(&format!("{alg_name}:{name}"))
                        .ok()
                        .filter(|d| prefix.file_name() == d.hex()[..2]);
                    let keep = match &digest {
                        Some(d) => {
                            meta.is_file()
                                && state_size(d) == Some(meta.len())
                                && meta.len() <= blob_bytes_max
                        }
                        None => false,
                    };
                    match (keep, digest) {
                        (true, Some(d)) => {
                            found.push((meta.modified()?, d, meta.len()));
                        }
                        _ => {
                            remove_path(&file.path())?;
                            report.removed += 1;
                        }
                    }
                }
            }
        }
        found.sort_by_key(|(m, _, _)| *m);
        let mut index = Index::default();
        for (_, digest, size) in found {
            index.insert(digest, size, false);
        }
        let cache = LocalCache {
            dir,
            tmp_dir,
            bytes_max,
            blob_bytes_max,
            index: Mutex::new(Index::default()),
            filling: Mutex::default(),
        };
        let evicted = index.evict_to(bytes_max);
        for d in &evicted {
            remove_path(&cache.path_of(d))?;
        }
        report.evicted = evicted.len() as u64;
        report.kept = index.entries.len() as u64;
        report.kept_bytes = index.bytes;
        metrics::gauge!(LOCAL_CACHE_BYTES).set(index.bytes as f64);
        *cache.index.lock() = index;
        Ok((cache, report))
    }

    /// The file of `digest` in the cache, whether or not it is there.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// Whether a blob of `size` bytes is kept here.
    pub fn fits(&self, size: u64) -> bool {
        size <= self.blob_bytes_max && size <= self.bytes_max
    }

    /// Total bytes of the files in the cache.
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    /// Whether `digest` is in the cache.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.index.lock().entries.contains_key(digest)
    }

    /// The file of the blob `digest` of `size` bytes (the state's size),
    /// when the cache has it, marked as used; counted as a hit or, for a
    /// blob that fits, a miss. An entry of another size is dropped.
    pub fn lookup(&self, digest: &Digest, size: u64) -> Option<PathBuf> {
        let mut index = self.index.lock();
        match index.entries.get(digest).map(|e| e.size) {
            Some(s) if s == size => {
                index.touch(digest);
                drop(index);
                metrics::counter!(LOCAL_CACHE_HITS).increment(1);
                Some(self.path_of(digest))
            }
            Some(_) => {
                index.remove(digest);
                metrics::gauge!(LOCAL_CACHE_BYTES).set(index.bytes as f64);
                drop(index);
                tracing::warn!(%digest, "a cached blob file has the wrong size; dropped");
                let _ = std::fs::remove_file(self.path_of(digest));
                metrics::counter!(LOCAL_CACHE_MISSES).increment(1);
                None
            }
            None => {
                drop(index);
                if self.fits(size) {
                    metrics::counter!(LOCAL_CACHE_MISSES).increment(1);
                }
                None
            }
        }
    }

    /// Bytes `start..start + len` of the cached blob `digest` of `size`
    /// bytes (its file from [`LocalCache::lookup`]), read as the
    /// filesystem backend reads its files. A blob of at most
    /// [`READ_IN_MEMORY_BYTES_MAX`] not yet verified by this process (a
    /// file found at startup, not fsynced when it was written) is read
    /// whole and hashed first: one whose bytes do not match is removed and
    /// an `InvalidData` error returned, never its bytes. Blocking.
    pub fn read(
        &self,
        digest: &Digest,
        (start, len, size): (u64, u64, u64),
    ) -> io::Result<BlobRange> {
        let path = self.path_of(digest);
        let verified = self
            .index
            .lock()
            .entries
            .get(digest)
            .is_none_or(|e| e.verified);
        if verified || size > READ_IN_MEMORY_BYTES_MAX {
            return read_file_range(&path, start, len);
        }
        let BlobRange::InMemory(whole) = read_file_range(&path, 0, size)? else {
            unreachable!("a blob of at most READ_IN_MEMORY_BYTES_MAX is read into memory");
        };
        if digest.recompute(&whole) != *digest {
            self.forget(digest);
            remove_path(&path)?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cached file of {digest} does not hash to it; removed"),
            ));
        }
        if let Some(e) = self.index.lock().entries.get_mut(digest) {
            e.verified = true;
        }
        let end = start + len;
        debug_assert!(end <= size, "ranges are checked against the state's size");
        Ok(BlobRange::InMemory(
            whole.slice(start as usize..end as usize),
        ))
    }

    /// Takes `digest` out of the index: its file was found missing, or
    /// the caller removes it (its blob was deleted, the caller holding
    /// the digest's lock).
    pub fn forget(&self, digest: &Digest) {
        let mut index = self.index.lock();
        index.remove(digest);
        metrics::gauge!(LOCAL_CACHE_BYTES).set(index.bytes as f64);
    }

    /// Starts a fill of `digest` (`size` bytes) from a read, unless it is
    /// cached, one is in flight for it, or fills in flight would hold more
    /// than [`FILL_BYTES_IN_FLIGHT_MAX`].
    pub fn begin_fill(self: &Arc<Self>, digest: &Digest, size: u64) -> Option<FillPermit> {
        if self.contains(digest) {
            return None;
        }
        let mut filling = self.filling.lock();
        if filling.1 + size > FILL_BYTES_IN_FLIGHT_MAX || !filling.0.insert(digest.clone()) {
            return None;
        }
        filling.1 += size;
        Some(FillPermit {
            cache: self.clone(),
            digest: digest.clone(),
            size,
        })
    }

    /// Writes `pieces`, the whole blob `digest`, to a temporary file,
    /// checking their digest, and fsyncs it unless it is small enough to
    /// be hashed on its first read after a restart. Blocking.
    pub fn prepare_bytes(&self, digest: &Digest, pieces: &[Bytes]) -> io::Result<Prepared> {
        let mut hasher = digest.algorithm().hasher();
        let mut size = 0u64;
        for p in pieces {
            hasher.update(p);
            size += p.len() as u64;
        }
        check_digest(hasher.finish(), digest)?;
        let tmp = self.tmp_dir.join(format!("{}.tmp", super::new_upload_id()));
        // Dropped on an error: what was written is removed.
        let prepared = Prepared {
            from: tmp,
            digest: digest.clone(),
            size,
            committed: false,
        };
        let mut f = File::create(&prepared.from)?;
        for p in pieces {
            f.write_all(p)?;
        }
        if needs_sync(size) {
            f.sync_all()?;
        }
        Ok(prepared)
    }

    /// Takes `path`, a file holding exactly the blob `digest` (an upload's
    /// staging file), checking its digest, and fsyncs it unless it is
    /// small enough to be hashed on its first read after a restart (a
    /// staging file is fsynced already). The file is
    /// removed if it does not match, or if the result is dropped
    /// uncommitted. Blocking.
    pub fn prepare_file(&self, digest: &Digest, path: &Path) -> io::Result<Prepared> {
        let mut prepared = Prepared {
            from: path.to_owned(),
            digest: digest.clone(),
            size: 0,
            committed: false,
        };
        let mut f = File::open(path)?;
        let mut hasher = digest.algorithm().hasher();
        let mut buf = vec![0u8; IO_BUFFER_BYTES.min(1 << 16)];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            prepared.size += n as u64;
        }
        check_digest(hasher.finish(), digest)?;
        if needs_sync(prepared.size) {
            f.sync_all()?;
        }
        Ok(prepared)
    }

    /// Renames a prepared file into place and indexes it, evicting the
    /// least recently used past the cap. The caller holds the digest's
    /// lock and has checked that the state has the blob. Blocking.
    pub fn commit(&self, mut prepared: Prepared) -> io::Result<()> {
        let target = self.path_of(&prepared.digest);
        let dir = target.parent().expect("cache paths have a parent");
        if let Err(e) = std::fs::rename(&prepared.from, &target) {
            if e.kind() != io::ErrorKind::NotFound || dir.is_dir() {
                return Err(e);
            }
            std::fs::create_dir_all(dir)?;
            std::fs::rename(&prepared.from, &target)?;
        }
        prepared.committed = true;
        let evicted = {
            let mut index = self.index.lock();
            index.insert(prepared.digest.clone(), prepared.size, true);
            let evicted = index.evict_to(self.bytes_max);
            // Under the lock: concurrent fills set it in order.
            metrics::gauge!(LOCAL_CACHE_BYTES).set(index.bytes as f64);
            evicted
        };
        for d in &evicted {
            // A reader that opened it keeps its bytes.
            remove_path(&self.path_of(d))?;
        }
        metrics::counter!(LOCAL_CACHE_FILLS).increment(1);
        metrics::counter!(LOCAL_CACHE_EVICTIONS).increment(evicted.len() as u64);
        Ok(())
    }
}

/// Whether a cache file of `size` bytes is fsynced before its rename:
/// one hashed on its first read after a restart ([`LocalCache::read`])
/// is not, since bytes a power loss spoiled are then found and never
/// served; a larger one, mapped and trusted, is.
fn needs_sync(size: u64) -> bool {
    size > READ_IN_MEMORY_BYTES_MAX
}

fn check_digest(computed: Digest, expected: &Digest) -> io::Result<()> {
    if computed == *expected {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bytes to cache hash to {computed}, not {expected}"),
    ))
}

/// Removes a file; one already gone is removed.
fn remove_path(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    fn fill(cache: &LocalCache, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let p = cache
            .prepare_bytes(&digest, &[Bytes::copy_from_slice(bytes)])
            .unwrap();
        cache.commit(p).unwrap();
        digest
    }

    #[test]
    fn keeps_at_most_the_cap_and_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = LocalCache::open(dir.path(), 3000, 2000, |_| None).unwrap();
        let a = fill(&cache, &bytes_of(1, 1000));
        let b = fill(&cache, &bytes_of(2, 1000));
        let c = fill(&cache, &bytes_of(3, 1000));
        assert_eq!(cache.bytes(), 3000);
        // `a` used again: `b` is now the least recently used.
        assert!(cache.lookup(&a, 1000).is_some());
        let d = fill(&cache, &bytes_of(4, 1000));
        assert!(cache.bytes() <= 3000);
        assert!(!cache.contains(&b) && !cache.path_of(&b).exists());
        for kept in [&a, &c, &d] {
            assert!(cache.path_of(kept).exists());
        }
        assert!(!cache.fits(2001));
    }

    #[test]
    fn a_mismatching_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = LocalCache::open(dir.path(), 1 << 20, 1 << 20, |_| None).unwrap();
        let wrong = Digest::sha256_of(b"other bytes");
        assert!(cache
            .prepare_bytes(&wrong, &[Bytes::from_static(b"bytes")])
            .is_err());
        let staging = dir.path().join("staging");
        std::fs::write(&staging, b"bytes").unwrap();
        assert!(cache.prepare_file(&wrong, &staging).is_err());
        drop(cache);
        let tmp = dir.path().join(LOCAL_CACHE_DIR).join(TMP_DIR);
        assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
    }

    #[test]
    fn reopening_keeps_only_files_the_state_has_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = LocalCache::open(dir.path(), 1 << 20, 1 << 20, |_| None).unwrap();
        let kept = fill(&cache, &bytes_of(1, 100));
        let unknown = fill(&cache, &bytes_of(2, 100));
        let resized = fill(&cache, &bytes_of(3, 100));
        std::fs::write(cache.path_of(&resized), bytes_of(3, 99)).unwrap();
        let leftover = dir.path().join(LOCAL_CACHE_DIR).join(TMP_DIR).join("x.tmp");
        std::fs::write(&leftover, b"torn").unwrap();
        drop(cache);
        let state = |d: &Digest| (*d == kept || *d == resized).then_some(100);
        let (cache, report) = LocalCache::open(dir.path(), 1 << 20, 1 << 20, state).unwrap();
        assert_eq!(report.kept, 1);
        assert_eq!(report.removed, 3);
        assert!(cache.lookup(&kept, 100).is_some());
        assert!(!cache.path_of(&unknown).exists());
        assert!(!cache.path_of(&resized).exists());
        assert!(!leftover.exists());
    }

    #[test]
    fn a_small_file_found_at_startup_is_hashed_on_its_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = LocalCache::open(dir.path(), 1 << 20, 1 << 20, |_| None).unwrap();
        let good = fill(&cache, &bytes_of(1, 1000));
        let bad = fill(&cache, &bytes_of(2, 1000));
        let mut flipped = std::fs::read(cache.path_of(&bad)).unwrap();
        flipped[500] ^= 1;
        std::fs::write(cache.path_of(&bad), &flipped).unwrap();
        drop(cache);
        let state = |_: &Digest| Some(1000);
        let (cache, _) = LocalCache::open(dir.path(), 1 << 20, 1 << 20, state).unwrap();
        let err = cache.read(&bad, (10, 20, 1000)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!cache.contains(&bad) && !cache.path_of(&bad).exists());
        let BlobRange::InMemory(range) = cache.read(&good, (10, 20, 1000)).unwrap() else {
            panic!("small ranges are read into memory");
        };
        assert_eq!(&range[..], &bytes_of(1, 1000)[10..30]);
        assert!(cache.index.lock().entries[&good].verified);
    }

    #[test]
    fn one_fill_per_digest_at_a_time_and_bounded_bytes_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = LocalCache::open(dir.path(), 1 << 20, 1 << 20, |_| None).unwrap();
        let cache = Arc::new(cache);
        let d = Digest::sha256_of(b"x");
        let permit = cache.begin_fill(&d, 1).unwrap();
        assert!(cache.begin_fill(&d, 1).is_none());
        drop(permit);
        assert!(cache.begin_fill(&d, 1).is_some());
        // Bounded in bytes held in memory.
        let held = cache.begin_fill(&d, 1).unwrap();
        let big = Digest::sha256_of(b"y");
        assert!(cache.begin_fill(&big, FILL_BYTES_IN_FLIGHT_MAX).is_none());
        drop(held);
        assert!(cache.begin_fill(&big, FILL_BYTES_IN_FLIGHT_MAX).is_some());
    }
}
