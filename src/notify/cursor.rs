//! An endpoint's cursor file: the sequence number of the last log entry
//! the endpoint acknowledged with a 2xx, in `<data>/notifications/<name>.cursor`.
//!
//! Written aside (`<name>.cursor.tmp`), fsynced, renamed over the old one
//! and the directory fsynced (`fsutil::write_atomic_with`): a crash leaves
//! the old cursor or the new one. The old one only means entries are sent
//! again, never that one is skipped. Layout (little-endian, documented in
//! `log-format/NOTIFICATIONS.md`):
//!
//! ```text
//! offset  bytes  field
//!      0      8  magic "FERROCUR"
//!      8      4  version (1)
//!     12      8  acked_seq
//!     20      8  written_unix_ns
//!     28      4  CRC-32 (IEEE) of bytes 0..28
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir_all_durable_with, write_atomic_with};
use crate::storage::FileSystem;

pub const CURSOR_MAGIC: [u8; 8] = *b"FERROCUR";
pub const CURSOR_VERSION: u32 = 1;
const VERSION_AT: usize = CURSOR_MAGIC.len();
const ACKED_AT: usize = VERSION_AT + 4;
const TIME_AT: usize = ACKED_AT + 8;
const CRC_AT: usize = TIME_AT + 8;
pub const CURSOR_FILE_BYTES: usize = CRC_AT + 4;

/// A decoded cursor file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub acked_seq: u64,
    pub written_unix_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} at offset {offset}: expected {expected}, found {actual}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        expected: String,
        actual: String,
    },
}

impl Cursor {
    pub fn encode(&self) -> [u8; CURSOR_FILE_BYTES] {
        let mut b = [0u8; CURSOR_FILE_BYTES];
        b[..VERSION_AT].copy_from_slice(&CURSOR_MAGIC);
        b[VERSION_AT..ACKED_AT].copy_from_slice(&CURSOR_VERSION.to_le_bytes());
        b[ACKED_AT..TIME_AT].copy_from_slice(&self.acked_seq.to_le_bytes());
        b[TIME_AT..CRC_AT].copy_from_slice(&self.written_unix_ns.to_le_bytes());
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(path: &Path, b: &[u8]) -> Result<Cursor, CursorError> {
        let corrupt = |offset: usize, expected: String, actual: String| CursorError::Corrupt {
            path: path.to_owned(),
            offset,
            expected,
            actual,
        };
        if b.len() != CURSOR_FILE_BYTES {
            return Err(corrupt(
                0,
                format!("{CURSOR_FILE_BYTES} bytes"),
                format!("{} bytes", b.len()),
            ));
        }
        if b[..VERSION_AT] != CURSOR_MAGIC {
            return Err(corrupt(
                0,
                format!("magic {:?}", "FERROCUR"),
                format!("{:?}", String::from_utf8_lossy(&b[..VERSION_AT])),
            ));
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let crc = crc32fast::hash(&b[..CRC_AT]);
        if u32_at(CRC_AT) != crc {
            return Err(corrupt(
                CRC_AT,
                format!("checksum {crc:#010x}"),
                format!("{:#010x}", u32_at(CRC_AT)),
            ));
        }
        if u32_at(VERSION_AT) != CURSOR_VERSION {
            return Err(corrupt(
                VERSION_AT,
                format!("version {CURSOR_VERSION}"),
                u32_at(VERSION_AT).to_string(),
            ));
        }
        Ok(Cursor {
            acked_seq: u64_at(ACKED_AT),
            written_unix_ns: u64_at(TIME_AT),
        })
    }
}

pub fn path(dir: &Path, endpoint: &str) -> PathBuf {
    dir.join(format!("{endpoint}.cursor"))
}

/// Reads an endpoint's cursor; `Ok(None)` when it has none yet.
pub fn read(dir: &Path, endpoint: &str) -> Result<Option<Cursor>, CursorError> {
    let p = path(dir, endpoint);
    match std::fs::read(&p) {
        Ok(bytes) => Cursor::decode(&p, &bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CursorError::Io { path: p, source }),
    }
}

/// Writes an endpoint's cursor durably (see the module comment).
pub fn write(
    fs: &dyn FileSystem,
    dir: &Path,
    endpoint: &str,
    cursor: Cursor,
) -> Result<(), CursorError> {
    let p = path(dir, endpoint);
    let io_err = |source| CursorError::Io {
        path: p.clone(),
        source,
    };
    create_dir_all_durable_with(fs, dir).map_err(io_err)?;
    write_atomic_with(fs, &p, &cursor.encode()).map_err(io_err)
}

/// The smallest cursor among the files in `dir` (an unreadable one counts
/// as 0: it holds everything), or `None` when there is none.
pub fn min_acked(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".cursor")?.to_owned();
            Some(read(dir, &name).ok().flatten().map_or(0, |c| c.acked_seq))
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn round_trips_and_rejects_damage() {
        let c = Cursor {
            acked_seq: 42,
            written_unix_ns: 7,
        };
        let p = Path::new("x.cursor");
        let b = c.encode();
        assert_eq!(Cursor::decode(p, &b).unwrap(), c);
        for i in 0..CURSOR_FILE_BYTES {
            let mut bad = b;
            bad[i] ^= 0x40;
            assert!(Cursor::decode(p, &bad).is_err(), "flip at {i}");
        }
        assert!(Cursor::decode(p, &b[..CURSOR_FILE_BYTES - 1]).is_err());
    }

    #[test]
    fn golden_samples_decode_as_documented() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/log-format/samples/cursor"
        ));
        let valid = std::fs::read(dir.join("valid.cursor")).unwrap();
        let c = Cursor::decode(Path::new("valid.cursor"), &valid).unwrap();
        assert_eq!(
            c,
            Cursor {
                acked_seq: 19,
                written_unix_ns: 1_764_411_162_319_000_000
            }
        );
        assert_eq!(
            c.encode().as_slice(),
            valid.as_slice(),
            "the encoder writes the same bytes"
        );
        let corrupt = std::fs::read(dir.join("corrupt.cursor")).unwrap();
        match Cursor::decode(Path::new("corrupt.cursor"), &corrupt) {
            Err(CursorError::Corrupt { offset, .. }) => assert_eq!(offset, CRC_AT),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_write_is_durable_and_whole() {
        let root = tempfile::tempdir().unwrap();
        let fs = SimFs::new(root.path()).unwrap();
        let dir = root.path().join("notifications");
        for seq in [1, 2] {
            write(
                &fs,
                &dir,
                "ci",
                Cursor {
                    acked_seq: seq,
                    written_unix_ns: 0,
                },
            )
            .unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        fs.durable_image().materialize(out.path()).unwrap();
        let got = read(&out.path().join("notifications"), "ci")
            .unwrap()
            .unwrap();
        assert_eq!(got.acked_seq, 2);
        assert!(read(&dir, "other").unwrap().is_none());
    }
}
