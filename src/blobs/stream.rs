//! Streaming a mapped blob range: the pieces of a [`MappedRange`] as a
//! stream of [`Bytes`], each mapped on the blocking pool (and its pages
//! faulted in there, unless the connection sends them with `sendfile`:
//! see [`MappedRange::map_piece`]), with the next pieces already being
//! mapped while the current one is sent.
//!
//! Why ahead: the connection asks for the next piece only once the current
//! one has nearly all gone to the socket, so mapping it only then leaves
//! the socket with little to send while the map is made (and, when the
//! blob is not in the page cache, while the disk reads it). Mapping ahead
//! keeps one piece ready, at the cost of one more piece resident.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::read::MappedRange;
use crate::sendfile::FileRegions;

/// Pieces mapped ahead of the one the connection is sending: one is enough
/// to keep a piece ready whenever the connection asks (each piece is
/// [`MAP_PIECE_BYTES`](super::read::MAP_PIECE_BYTES), so a download keeps
/// at most this many more pieces resident).
pub const PIECES_AHEAD: usize = 1;

/// The pieces of a range, in order, mapped [`PIECES_AHEAD`] ahead.
///
/// # Invariants
/// `mapping` holds the tasks of pieces `next - mapping.len() .. next`, in
/// order; `next <= count`.
pub struct PieceStream {
    range: Arc<MappedRange>,
    /// The next piece to start mapping.
    next: u64,
    count: u64,
    mapping: VecDeque<JoinHandle<io::Result<Bytes>>>,
    ahead: usize,
    /// The connection's regions when it sends pieces with `sendfile`.
    sendfile: Option<FileRegions>,
}

impl PieceStream {
    /// Streams `range`, for a connection that sends registered pieces
    /// with `sendfile` when it has `sendfile` regions. Must be polled
    /// inside a tokio runtime (the pieces are mapped on its blocking
    /// pool).
    pub fn new(range: MappedRange, sendfile: Option<FileRegions>) -> PieceStream {
        PieceStream::with_ahead(range, PIECES_AHEAD, sendfile)
    }

    /// As [`PieceStream::new`], mapping `ahead` pieces ahead (0: each
    /// piece only when it is asked for).
    pub fn with_ahead(
        range: MappedRange,
        ahead: usize,
        sendfile: Option<FileRegions>,
    ) -> PieceStream {
        let count = range.piece_count();
        PieceStream {
            range: Arc::new(range),
            next: 0,
            count,
            mapping: VecDeque::with_capacity(ahead + 1),
            ahead,
            sendfile,
        }
    }

    /// Starts mapping pieces until `ahead + 1` are under way (the one
    /// asked for and `ahead` after it), or none are left to start.
    fn start_mapping(&mut self) {
        while self.mapping.len() <= self.ahead && self.next < self.count {
            let range = self.range.clone();
            let i = self.next;
            let sendfile = self.sendfile.clone();
            self.mapping.push_back(tokio::task::spawn_blocking(move || {
                range.map_piece(i, sendfile.as_ref())
            }));
            self.next += 1;
        }
        debug_assert!(self.next <= self.count);
    }
}

impl futures_util::Stream for PieceStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.start_mapping();
        let Some(task) = self.mapping.front_mut() else {
            return Poll::Ready(None);
        };
        let joined = match Pin::new(task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(joined) => joined,
        };
        self.mapping.pop_front();
        let piece = joined.unwrap_or_else(|e| Err(io::Error::other(e)));
        if piece.is_err() {
            // The body ends with this error: map nothing more.
            self.next = self.count;
            self.mapping.clear();
        }
        // The pieces after this one are already being mapped while the
        // connection sends it (started when it was asked for).
        Poll::Ready(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::read::{BlobRange, MAP_PIECE_BYTES};
    use crate::blobs::BlobStore;
    use crate::datadir::Layout;
    use crate::oci::Digest;
    use futures_util::StreamExt as _;

    fn mapped(bytes: &[u8], start: u64) -> (tempfile::TempDir, MappedRange) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(&Layout::new(dir.path()));
        let digest = Digest::sha256_of(bytes);
        let path = store.blob_path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let len = bytes.len() as u64 - start;
        let BlobRange::Mapped(m) = store.read_range(&digest, start, len).unwrap() else {
            panic!("a large range is mapped");
        };
        (dir, m)
    }

    #[tokio::test]
    async fn the_stream_yields_every_piece_in_order_whatever_the_lookahead() {
        let piece = MAP_PIECE_BYTES as usize;
        let bytes: Vec<u8> = (0..3 * piece + 4321).map(|i| (i % 251) as u8).collect();
        for ahead in [0, 1, 2, 10] {
            for sendfile in [None, Some(FileRegions::new())] {
                let (_dir, m) = mapped(&bytes, 99);
                let pieces: Vec<Bytes> = PieceStream::with_ahead(m, ahead, sendfile.clone())
                    .map(|p| p.unwrap())
                    .collect()
                    .await;
                assert_eq!(pieces.len(), 4, "ahead {ahead}");
                // Unpopulated maps read the same bytes when something
                // does read them (a body copied on the way).
                assert_eq!(pieces.concat(), &bytes[99..], "ahead {ahead}");
                if let Some(regions) = sendfile {
                    assert_eq!(regions.len(), 4, "each live piece is registered");
                    drop(pieces);
                    assert!(regions.is_empty(), "a dropped piece is not");
                }
            }
        }
    }

    #[tokio::test]
    async fn mapping_runs_ahead_of_the_consumer() {
        let piece = MAP_PIECE_BYTES as usize;
        let bytes = vec![7u8; 3 * piece];
        let (_dir, m) = mapped(&bytes, 0);
        let mut stream = PieceStream::with_ahead(m, 1, None);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.len(), piece);
        // Piece 1 was started with piece 0, and only piece 1: while piece
        // 0 is sent, one piece is being mapped.
        assert_eq!((stream.next, stream.mapping.len()), (2, 1));
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.len(), piece);
        assert_eq!((stream.next, stream.mapping.len()), (3, 1));
        assert!(stream.next().await.unwrap().is_ok());
        assert!(stream.next().await.is_none());
    }
}
