//! The shipper's local cursor, `<data>/shipping/cursor`: the last record
//! known to be in the archive, the piece holding it and the epoch that
//! shipped it. A hint that saves listing the whole archive at start (the
//! archive itself is the truth: the shipper reads the named piece back and
//! lists only what follows it), and what compaction must keep after.
//!
//! Written aside, fsynced, renamed (`fsutil::write_atomic_with`): a crash
//! leaves the old cursor or the new one, and an old one only means a
//! longer look at the archive. Layout (little-endian;
//! `log-format/ARCHIVE.md`):
//!
//! ```text
//! offset  bytes  field
//!      0      8  magic "FERROSHP"
//!      8      4  version (1)
//!     12      8  shipped_seq
//!     20      4  shipped_crc
//!     24      8  piece_first_seq   first sequence number of the piece holding shipped_seq
//!     32      8  epoch
//!     40      8  written_unix_ns
//!     48      4  CRC-32 (IEEE) of bytes 0..48
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir_all_durable_with, write_atomic_with};
use crate::storage::FileSystem;

pub const CURSOR_MAGIC: [u8; 8] = *b"FERROSHP";
pub const CURSOR_VERSION: u32 = 1;
const VERSION_AT: usize = 8;
const SEQ_AT: usize = VERSION_AT + 4;
const CRC_FIELD_AT: usize = SEQ_AT + 8;
const PIECE_AT: usize = CRC_FIELD_AT + 4;
const EPOCH_AT: usize = PIECE_AT + 8;
const TIME_AT: usize = EPOCH_AT + 8;
const CRC_AT: usize = TIME_AT + 8;
pub const CURSOR_FILE_BYTES: usize = CRC_AT + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipCursor {
    pub shipped_seq: u64,
    pub shipped_crc: u32,
    pub piece_first_seq: u64,
    pub epoch: u64,
    pub written_unix_ns: u64,
}

impl ShipCursor {
    pub fn encode(&self) -> [u8; CURSOR_FILE_BYTES] {
        let mut b = [0u8; CURSOR_FILE_BYTES];
        b[..VERSION_AT].copy_from_slice(&CURSOR_MAGIC);
        b[VERSION_AT..SEQ_AT].copy_from_slice(&CURSOR_VERSION.to_le_bytes());
        b[SEQ_AT..CRC_FIELD_AT].copy_from_slice(&self.shipped_seq.to_le_bytes());
        b[CRC_FIELD_AT..PIECE_AT].copy_from_slice(&self.shipped_crc.to_le_bytes());
        b[PIECE_AT..EPOCH_AT].copy_from_slice(&self.piece_first_seq.to_le_bytes());
        b[EPOCH_AT..TIME_AT].copy_from_slice(&self.epoch.to_le_bytes());
        b[TIME_AT..CRC_AT].copy_from_slice(&self.written_unix_ns.to_le_bytes());
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<ShipCursor, String> {
        if b.len() != CURSOR_FILE_BYTES {
            return Err(format!(
                "expected {CURSOR_FILE_BYTES} bytes, found {}",
                b.len()
            ));
        }
        if b[..VERSION_AT] != CURSOR_MAGIC {
            return Err("bad magic at offset 0 (expected FERROSHP)".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let crc = crc32fast::hash(&b[..CRC_AT]);
        if u32_at(CRC_AT) != crc {
            return Err(format!(
                "checksum mismatch at offset {CRC_AT}: stored {:#010x}, computed {crc:#010x}",
                u32_at(CRC_AT)
            ));
        }
        if u32_at(VERSION_AT) != CURSOR_VERSION {
            return Err(format!("unsupported version {}", u32_at(VERSION_AT)));
        }
        Ok(ShipCursor {
            shipped_seq: u64_at(SEQ_AT),
            shipped_crc: u32_at(CRC_FIELD_AT),
            piece_first_seq: u64_at(PIECE_AT),
            epoch: u64_at(EPOCH_AT),
            written_unix_ns: u64_at(TIME_AT),
        })
    }
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("cursor")
}

/// The cursor in `dir`; `Ok(None)` when there is none, `Err` naming the
/// file when it is damaged.
pub fn read(dir: &Path) -> Result<Option<ShipCursor>, String> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => ShipCursor::decode(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Writes the cursor durably.
pub fn write(fs: &dyn FileSystem, dir: &Path, cursor: &ShipCursor) -> io::Result<()> {
    create_dir_all_durable_with(fs, dir)?;
    write_atomic_with(fs, &path(dir), &cursor.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_damage_is_refused() {
        let c = ShipCursor {
            shipped_seq: 99,
            shipped_crc: 0xdead_beef,
            piece_first_seq: 90,
            epoch: 3,
            written_unix_ns: 5,
        };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(&*crate::storage::real(), dir.path(), &c).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(c));
        let b = c.encode();
        for at in 0..CURSOR_FILE_BYTES {
            let mut bad = b;
            bad[at] ^= 0x04;
            assert!(ShipCursor::decode(&bad).is_err(), "byte {at}");
        }
    }
}
