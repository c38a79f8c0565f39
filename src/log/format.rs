//! The segment file format, byte by byte. `log-format/FORMAT.md` is the
//! contract; this module is its implementation. All integers little-endian.
//!
//! ```text
//! segment header (32 bytes)
//!   0  [u8; 8] magic        "FERROLOG"
//!   8  u16     version      FORMAT_VERSION
//!  10  u16     reserved     0
//!  12  u32     reserved     0
//!  16  u64     first_seq    sequence number of the segment's first record
//!  24  u32     prev_crc     crc of the last record before this segment (0 if none)
//!  28  u32     header_crc   CRC-32 of bytes [0, 28)
//!
//! record (32-byte header + payload), repeated to the end of the file
//!   0  u32     crc          CRC-32 of bytes [4, 32 + payload_len)
//!   4  u32     payload_len  at most RECORD_PAYLOAD_BYTES_MAX
//!   8  u32     prev_crc     crc of the previous record (the chain)
//!  12  u32     reserved     0
//!  16  u64     seq          previous record's seq + 1
//!  24  u64     time_unix_ns wall-clock time of the commit
//!  32  [u8]    payload      an `Entry`, bincode (see PAYLOAD_CONFIG)
//! ```

use crate::events::Entry;
use crate::limits::RECORD_PAYLOAD_BYTES_MAX;

pub const SEGMENT_MAGIC: [u8; 8] = *b"FERROLOG";
/// Bumped on any change to the bytes a reader sees; readers keep decoding
/// every older version.
pub const FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const RECORD_HEADER_BYTES: usize = 32;

const HEADER_CRC_OFFSET: usize = 28;
const RECORD_CRC_COVERS_FROM: usize = 4;

/// The payload encoding: bincode 2, little-endian, variable-length integers
/// (bincode's "standard" configuration), documented in FORMAT.md.
pub const PAYLOAD_CONFIG: bincode::config::Configuration = bincode::config::standard();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u16,
    pub first_seq: u64,
    pub prev_crc: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("file is shorter than a segment header ({0} bytes)")]
    Short(usize),
    #[error("bad magic {0:02x?}")]
    Magic([u8; 8]),
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported format version {0} (this build reads up to {FORMAT_VERSION})")]
    Version(u16),
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.prev_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderError::Short(b.len()));
        }
        let magic: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if magic != SEGMENT_MAGIC {
            return Err(HeaderError::Magic(magic));
        }
        let stored = u32_at(b, HEADER_CRC_OFFSET);
        let computed = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version == 0 || version > FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(SegmentHeader {
            version,
            first_seq: u64_at(b, 16),
            prev_crc: u32_at(b, 24),
        })
    }
}

/// The fixed part of a record, as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub payload_len: u32,
    pub prev_crc: u32,
    pub seq: u64,
    pub time_unix_ns: u64,
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{available} bytes left, fewer than a record header")]
    ShortHeader { available: usize },
    #[error("payload length {0} exceeds the limit")]
    TooLong(u32),
    #[error("record needs {needed} bytes, {available} left")]
    ShortPayload { needed: usize, available: usize },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("reserved field is {0:#x}, expected 0")]
    Reserved(u32),
}

impl RecordError {
    /// Short reads are what an interrupted append leaves behind.
    pub fn is_short(&self) -> bool {
        matches!(
            self,
            RecordError::ShortHeader { .. } | RecordError::ShortPayload { .. }
        )
    }
}

/// A record whose checksum verified; `payload` borrows from the input.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub header: RecordHeader,
    pub payload: &'a [u8],
}

impl RawRecord<'_> {
    pub fn len_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload.len()
    }
}

/// Reads the record at the start of `b` and checks its own checksum. Chain
/// and sequence continuity are the caller's to check (it knows the
/// previous record).
pub fn read_record(b: &[u8]) -> Result<RawRecord<'_>, RecordError> {
    if b.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::ShortHeader { available: b.len() });
    }
    let payload_len = u32_at(b, 4);
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return Err(RecordError::TooLong(payload_len));
    }
    let needed = RECORD_HEADER_BYTES + payload_len as usize;
    if b.len() < needed {
        return Err(RecordError::ShortPayload {
            needed,
            available: b.len(),
        });
    }
    let stored = u32_at(b, 0);
    let computed = crc32fast::hash(&b[RECORD_CRC_COVERS_FROM..needed]);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    let reserved = u32_at(b, 12);
    if reserved != 0 {
        return Err(RecordError::Reserved(reserved));
    }
    Ok(RawRecord {
        header: RecordHeader {
            crc: stored,
            payload_len,
            prev_crc: u32_at(b, 8),
            seq: u64_at(b, 16),
            time_unix_ns: u64_at(b, 24),
        },
        payload: &b[RECORD_HEADER_BYTES..needed],
    })
}

/// Appends one record to `out` and returns its crc (the next record's
/// `prev_crc`).
pub fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    time_unix_ns: u64,
    prev_crc: u32,
    payload: &[u8],
) -> u32 {
    let payload_len = u32::try_from(payload.len()).expect("payload checked against the limit");
    debug_assert!(payload_len <= RECORD_PAYLOAD_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&prev_crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_unix_ns.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + RECORD_CRC_COVERS_FROM..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    crc
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes exceeds the record limit")]
    TooLong(usize),
    #[error("payload does not decode: {0}")]
    Decode(String),
    #[error("payload has {0} trailing bytes after the entry")]
    Trailing(usize),
}

pub fn encode_payload(entry: &Entry) -> Result<Vec<u8>, PayloadError> {
    let v = bincode::serde::encode_to_vec(entry, PAYLOAD_CONFIG)
        .map_err(|e| PayloadError::Decode(e.to_string()))?;
    if v.len() > RECORD_PAYLOAD_BYTES_MAX as usize {
        return Err(PayloadError::TooLong(v.len()));
    }
    Ok(v)
}

pub fn decode_payload(payload: &[u8]) -> Result<Entry, PayloadError> {
    let config = PAYLOAD_CONFIG.with_limit::<{ RECORD_PAYLOAD_BYTES_MAX as usize }>();
    let (entry, used) = bincode::serde::decode_from_slice::<Entry, _>(payload, config)
        .map_err(|e| PayloadError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(PayloadError::Trailing(payload.len() - used));
    }
    Ok(entry)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Actor, Event};
    use crate::oci::{Digest, RepoName};

    fn entry() -> Entry {
        Entry {
            actor: Actor::anonymous(Some("127.0.0.1:1".into())),
            events: vec![Event::BlobDeleted {
                digest: Digest::sha256_of(b"x"),
                size: 1,
            }],
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            first_seq: 42,
            prev_crc: 7,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for i in 0..SEGMENT_HEADER_BYTES {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(SegmentHeader::decode(&c).is_err(), "byte {i}");
        }
        assert_eq!(SegmentHeader::decode(&b[..5]), Err(HeaderError::Short(5)));
    }

    #[test]
    fn record_round_trip_and_every_flip_detected() {
        let payload = encode_payload(&entry()).unwrap();
        let mut out = Vec::new();
        let crc = encode_record(&mut out, 9, 1234, 77, &payload);
        let r = read_record(&out).unwrap();
        assert_eq!(r.header.crc, crc);
        assert_eq!(r.header.seq, 9);
        assert_eq!(r.header.prev_crc, 77);
        assert_eq!(r.header.time_unix_ns, 1234);
        assert_eq!(decode_payload(r.payload).unwrap(), entry());
        for i in 0..out.len() {
            let mut c = out.clone();
            c[i] ^= 0x01;
            assert!(read_record(&c).is_err(), "flip at {i} undetected");
        }
        for cut in 0..out.len() {
            assert!(read_record(&out[..cut]).unwrap_err().is_short());
        }
    }

    #[test]
    fn repo_name_is_validated_on_decode() {
        let mut e = entry();
        e.events = vec![Event::UploadStarted {
            repo: RepoName::parse("ok").unwrap(),
            upload: "u".into(),
        }];
        let mut p = encode_payload(&e).unwrap();
        let i = p.windows(2).position(|w| w == b"ok").unwrap();
        p[i] = b'O';
        assert!(decode_payload(&p).is_err());
    }
}
