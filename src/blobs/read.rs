//! Reading committed blobs for GET: a small range is read into memory in
//! one go; a larger one is memory-mapped a piece at a time and handed out
//! as [`Bytes`] that own their map, so serving it copies nothing into user
//! space and takes one blocking-pool round trip per 4 MiB piece
//! ([`super::stream::PieceStream`] runs those a piece ahead of the send).
//! Each map asks the kernel to read the next piece ahead. A piece's pages
//! are faulted in there (populated), so a cold read never stalls an async
//! thread while the connection (or rustls) reads the map; on a plain
//! connection with `sendfile = true` the map is registered in the
//! connection's [`FileRegions`] instead and left untouched, and the
//! connection sends the file's bytes with `sendfile` ([`crate::sendfile`]).
//!
//! Mapping is safe here because a committed blob file never changes: it is
//! renamed into place whole and only ever unlinked (garbage collection),
//! and unlinking a file leaves existing maps of it valid. The files of the
//! object backend's local-disk cache (`local_cache`) are read the same
//! way, under the same rule (renamed in whole; evicted by unlinking).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::BlobStore;
use crate::oci::Digest;
use crate::sendfile::{FileRegions, RegisteredMap};

/// Ranges up to this size are read into memory rather than mapped: for a
/// few pages a read costs less than setting up and tearing down a map.
pub const READ_IN_MEMORY_BYTES_MAX: u64 = 64 * 1024;

/// A larger range is mapped this much at a time: each piece is its own
/// map, unmapped when the connection is done with it, so a download keeps
/// only a few pieces resident however large the blob.
pub const MAP_PIECE_BYTES: u64 = 4 * 1024 * 1024;

/// A range of a committed blob, ready to be served.
#[derive(Debug)]
pub enum BlobRange {
    /// Read whole into memory (at most [`READ_IN_MEMORY_BYTES_MAX`]).
    InMemory(Bytes),
    /// An open blob file and the range of it to serve, mapped piece by
    /// piece by [`MappedRange::pieces`].
    Mapped(MappedRange),
}

/// An open blob file and a range of it that lies within the file.
#[derive(Debug)]
pub struct MappedRange {
    /// Shared with the pieces registered for `sendfile`, which send from it.
    file: Arc<File>,
    start: u64,
    end: u64,
}

impl BlobStore {
    /// Bytes `start..start + len` of the committed blob `digest`: one
    /// open, and for a small range one read. Blocking: call it off the
    /// async threads. A file shorter than the range is an error
    /// (`UnexpectedEof`), never a short answer.
    pub fn read_range(&self, digest: &Digest, start: u64, len: u64) -> io::Result<BlobRange> {
        read_file_range(&self.blob_path(digest), start, len)
    }
}

/// Bytes `start..start + len` of the blob file at `path` (a committed
/// blob, or a file of the local-disk cache: neither changes once in
/// place), as [`BlobStore::read_range`] reads them. Blocking.
pub fn read_file_range(path: &Path, start: u64, len: u64) -> io::Result<BlobRange> {
    let file = File::open(path)?;
    if len <= READ_IN_MEMORY_BYTES_MAX {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, start)?;
        return Ok(BlobRange::InMemory(Bytes::from(buf)));
    }
    let file_len = file.metadata()?.len();
    let end = start
        .checked_add(len)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob file has {file_len} bytes, {start}+{len} were asked for"),
            )
        })?;
    Ok(BlobRange::Mapped(MappedRange {
        file: Arc::new(file),
        start,
        end,
    }))
}

impl MappedRange {
    /// How many pieces of at most [`MAP_PIECE_BYTES`] the range has.
    pub fn piece_count(&self) -> u64 {
        (self.end - self.start).div_ceil(MAP_PIECE_BYTES)
    }

    /// Piece `i` of the range, a map of its part of the file handed out
    /// without a copy. Blocking: call it off the async threads.
    ///
    /// Without `sendfile` the map is populated (its pages faulted in,
    /// read from the disk when the page cache does not have them), so
    /// sending it then faults nothing. With `sendfile` (the connection's
    /// regions) the map is not populated but registered for as long as
    /// the piece lives: the connection sends the file's bytes from the
    /// page cache and never reads the map.
    pub fn map_piece(&self, i: u64, sendfile: Option<&FileRegions>) -> io::Result<Bytes> {
        let offset = self.start + i * MAP_PIECE_BYTES;
        debug_assert!(offset < self.end, "piece {i} is past the range");
        let len = (self.end - offset).min(MAP_PIECE_BYTES) as usize;
        let mut options = memmap2::MmapOptions::new();
        options.offset(offset).len(len);
        if sendfile.is_none() {
            options.populate();
        }
        // SAFETY: committed blob files are never written, truncated or
        // replaced in place (see the module documentation), so the
        // mapped bytes cannot change under the map.
        let map = unsafe { options.map(&*self.file)? };
        if sendfile.is_some() && i == 0 {
            // Nothing faults this piece in: start reading it too.
            self.read_ahead(offset);
        }
        self.read_ahead(offset + len as u64);
        Ok(match sendfile {
            None => Bytes::from_owner(map),
            Some(regions) => Bytes::from_owner(RegisteredMap::new(
                map,
                self.file.clone(),
                offset,
                regions.clone(),
            )),
        })
    }

    /// Asks the kernel to start reading the piece that starts at `from`
    /// into the page cache without waiting (`POSIX_FADV_WILLNEED`): when
    /// the blob has left the page cache, the disk then reads a piece ahead
    /// of the one being mapped, and populating its map (or `sendfile`
    /// sending it, on the async thread) finds it there. A hint; cheap
    /// when the pages are cached already.
    fn read_ahead(&self, from: u64) {
        #[cfg(target_os = "linux")]
        if from < self.end {
            use std::os::fd::AsRawFd;
            let len = (self.end - from).min(MAP_PIECE_BYTES);
            let (Ok(offset), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(len))
            else {
                return;
            };
            // SAFETY: a plain system call on a descriptor this range owns;
            // its result is only a hint's, so it is ignored.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = from;
    }

    /// Every piece, in order, populated (blocking, as
    /// [`MappedRange::map_piece`]).
    pub fn pieces(self) -> impl Iterator<Item = io::Result<Bytes>> + Send + 'static {
        (0..self.piece_count()).map(move |i| self.map_piece(i, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::Layout;

    fn store_with(bytes: &[u8]) -> (tempfile::TempDir, BlobStore, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(&Layout::new(dir.path()));
        let digest = Digest::sha256_of(bytes);
        let path = store.blob_path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        (dir, store, digest)
    }

    fn collect(range: BlobRange) -> Vec<u8> {
        match range {
            BlobRange::InMemory(b) => b.to_vec(),
            BlobRange::Mapped(m) => m.pieces().flat_map(|p| p.unwrap().to_vec()).collect(),
        }
    }

    #[test]
    fn pieces_of_a_large_range_cover_it_exactly() {
        let piece = MAP_PIECE_BYTES as usize;
        let bytes: Vec<u8> = (0..2 * piece + 12_345).map(|i| (i % 253) as u8).collect();
        let (_dir, store, digest) = store_with(&bytes);
        let BlobRange::Mapped(m) = store
            .read_range(&digest, 7, (bytes.len() - 7) as u64)
            .unwrap()
        else {
            panic!("a large range is mapped");
        };
        let pieces: Vec<Bytes> = m.pieces().map(|p| p.unwrap()).collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].len(), piece);
        assert_eq!(pieces.concat(), &bytes[7..]);
    }

    #[test]
    fn small_and_mapped_ranges_read_the_same_bytes() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, store, digest) = store_with(&bytes);
        let all = collect(store.read_range(&digest, 0, bytes.len() as u64).unwrap());
        assert_eq!(&all[..], &bytes[..]);
        let mapped = collect(store.read_range(&digest, 1000, 200_000).unwrap());
        assert_eq!(&mapped[..], &bytes[1000..201_000]);
        let small = collect(store.read_range(&digest, 299_000, 1000).unwrap());
        assert_eq!(&small[..], &bytes[299_000..]);
        assert!(store.read_range(&digest, 299_000, 2000).is_err());
        assert!(store.read_range(&digest, 100, 300_000).is_err());
    }

    #[test]
    fn an_empty_blob_reads_as_empty() {
        let (_dir, store, digest) = store_with(b"");
        assert!(collect(store.read_range(&digest, 0, 0).unwrap()).is_empty());
    }
}
