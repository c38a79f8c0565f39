//! A piece: a run of consecutive log records shipped as one immutable
//! object, `log/<first seq>.log`. Its bytes are a segment file of the log
//! format (`log-format/FORMAT.md`): the 32-byte segment header
//! (`first_seq`, and `prev_crc` linking it to the piece before) and the
//! records exactly as they are on disk, with their checksums and chain.
//! So a piece needs no format of its own, and any log reader can read it.
//!
//! Unlike the live log's last segment, a piece is never appended to: a
//! short or bad record anywhere in it is corruption, never a torn tail.

use super::store::piece_name;
use crate::log::format::{read_record, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_BYTES};

/// A piece being built from verified records.
#[derive(Debug)]
pub struct PieceBuilder {
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_crc: u32,
    pub last_time_unix_ns: u64,
    bytes: Vec<u8>,
}

impl PieceBuilder {
    /// An empty piece whose first record will be `first_seq`, following a
    /// record with checksum `prev_crc`.
    pub fn new(first_seq: u64, prev_crc: u32) -> PieceBuilder {
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            first_seq,
            prev_crc,
        };
        PieceBuilder {
            first_seq,
            last_seq: first_seq - 1,
            last_crc: prev_crc,
            last_time_unix_ns: 0,
            bytes: header.encode().to_vec(),
        }
    }

    /// Appends one record as it is on disk. `false` (and nothing
    /// appended) when `crc` is not what the record's bytes give after this
    /// piece's last record: the record does not continue the chain.
    ///
    /// # Panics (debug)
    /// If the record's sequence number does not continue the piece.
    #[must_use]
    pub fn push(&mut self, seq: u64, time_unix_ns: u64, crc: u32, payload: &[u8]) -> bool {
        debug_assert_eq!(seq, self.last_seq + 1, "records are consecutive");
        let start = self.bytes.len();
        let written = crate::log::format::encode_record(
            &mut self.bytes,
            seq,
            time_unix_ns,
            self.last_crc,
            payload,
        );
        if written != crc {
            self.bytes.truncate(start);
            return false;
        }
        self.last_seq = seq;
        self.last_crc = crc;
        self.last_time_unix_ns = time_unix_ns;
        true
    }

    pub fn records(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn name(&self) -> String {
        piece_name(self.first_seq)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A record of a piece, verified.
#[derive(Debug, Clone, Copy)]
pub struct PieceRecord<'a> {
    pub seq: u64,
    pub time_unix_ns: u64,
    pub crc: u32,
    pub prev_crc: u32,
    /// The record's bytes as on disk (header and payload).
    pub bytes: &'a [u8],
    pub payload: &'a [u8],
}

/// Why a piece cannot be used; every message names the object and offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} at offset {offset}: {reason}")]
pub struct PieceError {
    pub name: String,
    pub offset: u64,
    pub reason: String,
}

/// Verifies a whole piece: header, the name's sequence number, every
/// record's checksum, sequence continuity and chain, from `prev` (the
/// sequence number and checksum of the record before it, when known).
/// Calls `visit` for each record in order; returns the last record's
/// sequence number and checksum (`first_seq - 1` and `prev_crc` for an
/// empty piece, which a writer never ships).
pub fn verify(
    name: &str,
    name_seq: u64,
    bytes: &[u8],
    prev: Option<(u64, u32)>,
    visit: &mut dyn FnMut(&PieceRecord<'_>) -> std::ops::ControlFlow<()>,
) -> Result<(u64, u32), PieceError> {
    let err = |offset: usize, reason: String| PieceError {
        name: name.to_owned(),
        offset: offset as u64,
        reason,
    };
    let header = SegmentHeader::decode(bytes).map_err(|e| err(0, e.to_string()))?;
    if header.first_seq != name_seq {
        return Err(err(
            16,
            format!(
                "header says first sequence {}, the name says {name_seq}",
                header.first_seq
            ),
        ));
    }
    if let Some((prev_seq, prev_crc)) = prev {
        if header.first_seq != prev_seq + 1 {
            return Err(err(
                16,
                format!(
                    "starts at sequence {} but the archive before it ends at {prev_seq}: records {}..{} are missing",
                    header.first_seq,
                    prev_seq + 1,
                    header.first_seq.saturating_sub(1)
                ),
            ));
        }
        if header.prev_crc != prev_crc {
            return Err(err(
                24,
                format!(
                    "chain broken: expected previous checksum {prev_crc:#010x}, found {:#010x}",
                    header.prev_crc
                ),
            ));
        }
    }
    let mut at = SEGMENT_HEADER_BYTES;
    let mut last = (header.first_seq - 1, header.prev_crc);
    while at < bytes.len() {
        let record = read_record(&bytes[at..]).map_err(|e| err(at, e.to_string()))?;
        let h = record.header;
        if h.seq != last.0 + 1 {
            return Err(err(
                at,
                format!("expected sequence {}, found {}", last.0 + 1, h.seq),
            ));
        }
        if h.prev_crc != last.1 {
            return Err(err(
                at,
                format!(
                    "chain broken: expected previous checksum {:#010x}, found {:#010x}",
                    last.1, h.prev_crc
                ),
            ));
        }
        let len = record.len_bytes();
        let view = PieceRecord {
            seq: h.seq,
            time_unix_ns: h.time_unix_ns,
            crc: h.crc,
            prev_crc: h.prev_crc,
            bytes: &bytes[at..at + len],
            payload: record.payload,
        };
        last = (h.seq, h.crc);
        at += len;
        if visit(&view).is_break() {
            break;
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::ControlFlow;

    fn piece(first: u64, prev_crc: u32, n: u64) -> PieceBuilder {
        let mut b = PieceBuilder::new(first, prev_crc);
        for seq in first..first + n {
            let payload = format!("record {seq}").into_bytes();
            let mut scratch = Vec::new();
            let crc = crate::log::format::encode_record(
                &mut scratch,
                seq,
                seq * 10,
                b.last_crc,
                &payload,
            );
            assert!(b.push(seq, seq * 10, crc, &payload));
            assert!(!b.push(seq + 1, 0, crc, &payload), "a record off the chain");
        }
        b
    }

    #[test]
    fn a_piece_verifies_and_chains() {
        let a = piece(1, 0, 3);
        let a_last = (a.last_seq, a.last_crc);
        let b = piece(4, a.last_crc, 2);
        let a_bytes = a.into_bytes();
        let mut seen = Vec::new();
        let end = verify("log/a", 1, &a_bytes, Some((0, 0)), &mut |r| {
            seen.push(r.seq);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(end, a_last);
        assert_eq!(seen, [1, 2, 3]);
        let b_bytes = b.into_bytes();
        verify("log/b", 4, &b_bytes, Some(a_last), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        // Not after a piece that ends elsewhere, or with another checksum.
        let hole = verify("log/b", 4, &b_bytes, Some((2, a_last.1)), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(hole.reason.contains("missing"), "{hole}");
        let fork = verify("log/b", 4, &b_bytes, Some((3, 7)), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(fork.reason.contains("chain"), "{fork}");
    }

    #[test]
    fn a_flipped_byte_or_a_cut_is_named_with_its_offset() {
        let bytes = piece(1, 0, 3).into_bytes();
        for at in [3, SEGMENT_HEADER_BYTES + 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let e = verify("log/x", 1, &bad, None, &mut |_| ControlFlow::Continue(())).unwrap_err();
            assert_eq!(e.name, "log/x");
        }
        let cut = &bytes[..bytes.len() - 2];
        let e = verify("log/x", 1, cut, None, &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert!(e.offset > SEGMENT_HEADER_BYTES as u64, "{e}");
        let e = verify("log/x", 2, &bytes, None, &mut |_| ControlFlow::Continue(())).unwrap_err();
        assert!(e.reason.contains("name"), "{e}");
    }
}
