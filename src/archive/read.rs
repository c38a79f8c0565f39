//! Reading an archive back: its pieces in order, each downloaded once and
//! verified (header, checksums, sequence continuity, the chain from the
//! piece before). Restore and `ferroctl archive verify` both walk it.

use std::ops::ControlFlow;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _};

use super::piece::{self, PieceError, PieceRecord};
use super::store::{parse_numbered, ArchiveStore, Listed, StoreError, LOG_DIR, PIECE_SUFFIX};

/// Pieces fetched ahead of the one being verified.
const PREFETCH_PIECES: usize = 8;

/// A piece as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceInfo {
    pub name: String,
    pub first_seq: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt archive object {0}")]
    Corrupt(#[from] PieceError),
    #[error("{0}")]
    Other(String),
}

/// The archive's pieces, in sequence order. Other names under `log/` are
/// not the archive's and are ignored.
pub async fn list_pieces(store: &ArchiveStore) -> Result<Vec<PieceInfo>, StoreError> {
    Ok(pieces_of(store.list(LOG_DIR, None).await?))
}

/// The pieces among `listed` (a listing of `log/`), in sequence order.
pub fn pieces_of(listed: Vec<Listed>) -> Vec<PieceInfo> {
    let mut pieces: Vec<PieceInfo> = listed
        .into_iter()
        .filter_map(|l| {
            parse_numbered(&l.name, LOG_DIR, PIECE_SUFFIX).map(|first_seq| PieceInfo {
                name: l.name,
                first_seq,
                size: l.size,
            })
        })
        .collect();
    pieces.sort_by_key(|p| p.first_seq);
    pieces
}

/// Where a walk ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkEnd {
    /// The last record handed to the visitor (0 / 0: none).
    pub last_seq: u64,
    pub last_crc: u32,
    pub last_time_unix_ns: u64,
    pub records: u64,
    pub pieces: u64,
    pub bytes: u64,
}

/// Downloads and verifies `pieces` in order, each chained to the one
/// before (the first to `start`, when given), and hands every record to
/// `visit` until it breaks. A missing piece, a gap between two pieces, a
/// broken chain or a bad checksum stops the walk with the object's name.
pub async fn walk(
    store: &ArchiveStore,
    pieces: &[PieceInfo],
    start: Option<(u64, u32)>,
    visit: &mut dyn FnMut(&PieceRecord<'_>) -> Result<ControlFlow<()>, String>,
) -> Result<WalkEnd, ReadError> {
    let mut end = WalkEnd::default();
    let mut prev = start;
    let mut fetches = stream::iter(pieces.iter().cloned())
        .map(|p| async move {
            let bytes: Result<Bytes, StoreError> = store.get(&p.name).await;
            (p, bytes)
        })
        .buffered(PREFETCH_PIECES);
    while let Some((p, bytes)) = fetches.next().await {
        let bytes = bytes?;
        let mut stopped = false;
        let mut visit_error = None;
        let last = piece::verify(
            &p.name,
            p.first_seq,
            &bytes,
            prev,
            &mut |r| match visit(r) {
                Ok(ControlFlow::Continue(())) => {
                    end.last_seq = r.seq;
                    end.last_crc = r.crc;
                    end.last_time_unix_ns = r.time_unix_ns;
                    end.records += 1;
                    ControlFlow::Continue(())
                }
                Ok(ControlFlow::Break(())) => {
                    stopped = true;
                    ControlFlow::Break(())
                }
                Err(e) => {
                    visit_error = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        if let Some(e) = visit_error {
            return Err(ReadError::Other(e));
        }
        end.pieces += 1;
        end.bytes += bytes.len() as u64;
        if stopped {
            break;
        }
        prev = Some(last);
    }
    Ok(end)
}
