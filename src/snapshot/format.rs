//! The snapshot file format, byte by byte. `log-format/SNAPSHOT.md` is the
//! contract; this module is its implementation. All integers little-endian.
//!
//! ```text
//! header (48 bytes)
//!   0  [u8; 8] magic         "FERROSNP"
//!   8  u16     version       SNAPSHOT_VERSION
//!  10  u16     reserved      0
//!  12  u32     chain_crc     crc of log record `seq` (0 when seq is 0)
//!  16  u64     seq           the last record applied to the state
//!  24  u64     time_unix_ns  that record's commit time
//!  32  u64     payload_len   bytes after the header
//!  40  u32     payload_crc   CRC-32 of the payload
//!  44  u32     header_crc    CRC-32 of bytes [0, 44)
//!  48  [u8]    payload       the `State`, bincode (log::format::PAYLOAD_CONFIG);
//!                              version 2: then the state's `ObjectIndex`
//! ```
//!
//! Version 2 is written only when the state has object-store entries
//! (`[storage] backend = "s3"`); a filesystem registry's snapshots stay
//! version 1, byte for byte.
//!
//! A file is exactly `SNAPSHOT_HEADER_BYTES + payload_len` bytes long.
//! Invariant: a snapshot whose checks fail is never used; the log is the
//! truth and a snapshot only a cache of it.

use std::io::{self, Read, Write};

use crate::log::format::PAYLOAD_CONFIG;

/// The largest snapshot payload decoded (and so the largest allocation a
/// length prefix in one can ask for).
const SNAPSHOT_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024 * 1024;
use crate::projection::State;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"FERROSNP";
/// Bumped on any change to the bytes, the payload's shape (the fields of
/// `State` and everything under it) included. A reader skips a version it
/// does not know and replays the log instead.
pub const SNAPSHOT_VERSION: u16 = 1;
/// The version of a snapshot whose payload ends with the object index.
pub const SNAPSHOT_VERSION_OBJECTS: u16 = 2;
pub const SNAPSHOT_HEADER_BYTES: usize = 48;

const CHAIN_CRC_OFFSET: usize = 12;
const SEQ_OFFSET: usize = 16;
const TIME_OFFSET: usize = 24;
const PAYLOAD_LEN_OFFSET: usize = 32;
const PAYLOAD_CRC_OFFSET: usize = 40;
const HEADER_CRC_OFFSET: usize = 44;
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SNAPSHOT_HEADER_BYTES);

/// The fixed part of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotHeader {
    pub version: u16,
    pub chain_crc: u32,
    pub seq: u64,
    pub time_unix_ns: u64,
    pub payload_len: u64,
    pub payload_crc: u32,
}

/// Why a snapshot cannot be used. Every variant means "skip it".
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    #[error("file is {0} bytes, shorter than a snapshot header")]
    Short(u64),
    #[error("bad magic {0:02x?}")]
    Magic([u8; 8]),
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported snapshot version {0} (this build reads version {SNAPSHOT_VERSION})")]
    Version(u16),
    #[error("reserved field is {0:#x}, expected 0")]
    Reserved(u16),
    #[error("file is {actual} bytes but its header says {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum { stored: u32, computed: u32 },
    #[error("payload does not decode: {0}")]
    Decode(String),
    #[error("payload has {0} trailing bytes after the state")]
    Trailing(u64),
    #[error("header says sequence {header_seq} at {header_time}, the state says {state_seq} at {state_time}")]
    StateMismatch {
        header_seq: u64,
        header_time: u64,
        state_seq: u64,
        state_time: u64,
    },
    #[error("payload does not encode: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl SnapshotHeader {
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut b = [0u8; SNAPSHOT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[CHAIN_CRC_OFFSET..CHAIN_CRC_OFFSET + 4].copy_from_slice(&self.chain_crc.to_le_bytes());
        b[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&self.seq.to_le_bytes());
        b[TIME_OFFSET..TIME_OFFSET + 8].copy_from_slice(&self.time_unix_ns.to_le_bytes());
        b[PAYLOAD_LEN_OFFSET..PAYLOAD_LEN_OFFSET + 8]
            .copy_from_slice(&self.payload_len.to_le_bytes());
        b[PAYLOAD_CRC_OFFSET..PAYLOAD_CRC_OFFSET + 4]
            .copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic, checksum, version, reserved.
    pub fn decode(b: &[u8]) -> Result<SnapshotHeader, SnapshotFormatError> {
        if b.len() < SNAPSHOT_HEADER_BYTES {
            return Err(SnapshotFormatError::Short(b.len() as u64));
        }
        let magic: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if magic != SNAPSHOT_MAGIC {
            return Err(SnapshotFormatError::Magic(magic));
        }
        let stored = u32_at(b, HEADER_CRC_OFFSET);
        let computed = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        if stored != computed {
            return Err(SnapshotFormatError::HeaderChecksum { stored, computed });
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_OBJECTS {
            return Err(SnapshotFormatError::Version(version));
        }
        let reserved = u16::from_le_bytes([b[10], b[11]]);
        if reserved != 0 {
            return Err(SnapshotFormatError::Reserved(reserved));
        }
        Ok(SnapshotHeader {
            version,
            chain_crc: u32_at(b, CHAIN_CRC_OFFSET),
            seq: u64_at(b, SEQ_OFFSET),
            time_unix_ns: u64_at(b, TIME_OFFSET),
            payload_len: u64_at(b, PAYLOAD_LEN_OFFSET),
            payload_crc: u32_at(b, PAYLOAD_CRC_OFFSET),
        })
    }

    pub fn file_bytes(&self) -> u64 {
        SNAPSHOT_HEADER_BYTES as u64 + self.payload_len
    }
}

/// Checks everything but the payload's decoding: header, length and
/// payload checksum. Cheap next to decoding (CRC-32 runs at memory speed).
pub fn check(bytes: &[u8]) -> Result<SnapshotHeader, SnapshotFormatError> {
    let header = SnapshotHeader::decode(bytes)?;
    let actual = bytes.len() as u64;
    if actual != header.file_bytes() {
        return Err(SnapshotFormatError::Length {
            expected: header.file_bytes(),
            actual,
        });
    }
    let computed = crc32fast::hash(&bytes[SNAPSHOT_HEADER_BYTES..]);
    if computed != header.payload_crc {
        return Err(SnapshotFormatError::PayloadChecksum {
            stored: header.payload_crc,
            computed,
        });
    }
    Ok(header)
}

/// Checks and decodes a whole snapshot file's bytes.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, State), SnapshotFormatError> {
    let header = check(bytes)?;
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    // The payload checksum verified, so lengths inside it are the writer's;
    // bincode still never reads past the slice.
    // A limit, so a length prefix is checked before anything is allocated
    // for it: a damaged (or crafted) one must fail, not abort the process.
    let config = PAYLOAD_CONFIG.with_limit::<SNAPSHOT_PAYLOAD_BYTES_MAX>();
    let (mut state, mut used) = bincode::serde::decode_from_slice::<State, _>(payload, config)
        .map_err(|e| SnapshotFormatError::Decode(e.to_string()))?;
    if header.version == SNAPSHOT_VERSION_OBJECTS {
        let (objects, more) = bincode::serde::decode_from_slice(&payload[used..], config)
            .map_err(|e| SnapshotFormatError::Decode(e.to_string()))?;
        state.objects = objects;
        used += more;
    }
    if used != payload.len() {
        return Err(SnapshotFormatError::Trailing((payload.len() - used) as u64));
    }
    matches_header(&header, &state)?;
    Ok((header, state))
}

/// [`check`], reading `file` (positioned at its start, `len` bytes long)
/// through a small buffer. Pages of a mapped file count in the process's
/// resident set while mapped; read this way, checking a snapshot does not
/// grow it by the file's size.
pub fn check_read<R: Read>(file: &mut R, len: u64) -> Result<SnapshotHeader, SnapshotFormatError> {
    let mut head = [0u8; SNAPSHOT_HEADER_BYTES];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let header = SnapshotHeader::decode(&head[..filled])?;
    if len != header.file_bytes() {
        return Err(SnapshotFormatError::Length {
            expected: header.file_bytes(),
            actual: len,
        });
    }
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut payload = file.take(header.payload_len);
    let mut read = 0u64;
    loop {
        match payload.read(&mut buffer)? {
            0 => break,
            n => {
                crc.update(&buffer[..n]);
                read += n as u64;
            }
        }
    }
    if read != header.payload_len {
        // The file shrank since its length was read.
        return Err(SnapshotFormatError::Length {
            expected: header.file_bytes(),
            actual: SNAPSHOT_HEADER_BYTES as u64 + read,
        });
    }
    let computed = crc.finalize();
    if computed != header.payload_crc {
        return Err(SnapshotFormatError::PayloadChecksum {
            stored: header.payload_crc,
            computed,
        });
    }
    Ok(header)
}

/// [`decode`] after [`check_read`]: decodes the payload that `payload`
/// holds next (the bytes after the header), read through a buffer.
pub fn decode_read<R: Read>(
    header: &SnapshotHeader,
    payload: R,
) -> Result<State, SnapshotFormatError> {
    let config = PAYLOAD_CONFIG.with_limit::<SNAPSHOT_PAYLOAD_BYTES_MAX>();
    let mut counting = CountingReader {
        inner: io::BufReader::with_capacity(READ_BUFFER_BYTES, payload.take(header.payload_len)),
        bytes: 0,
    };
    let mut state: State = bincode::serde::decode_from_std_read(&mut counting, config)
        .map_err(|e| SnapshotFormatError::Decode(e.to_string()))?;
    if header.version == SNAPSHOT_VERSION_OBJECTS {
        state.objects = bincode::serde::decode_from_std_read(&mut counting, config)
            .map_err(|e| SnapshotFormatError::Decode(e.to_string()))?;
    }
    if counting.bytes != header.payload_len {
        return Err(SnapshotFormatError::Trailing(
            header.payload_len.saturating_sub(counting.bytes),
        ));
    }
    matches_header(header, &state)?;
    Ok(state)
}

const READ_BUFFER_BYTES: usize = 1 << 20;

/// The state is the one the header describes.
fn matches_header(header: &SnapshotHeader, state: &State) -> Result<(), SnapshotFormatError> {
    if state.last_seq != header.seq || state.last_time_unix_ns != header.time_unix_ns {
        return Err(SnapshotFormatError::StateMismatch {
            header_seq: header.seq,
            header_time: header.time_unix_ns,
            state_seq: state.last_seq,
            state_time: state.last_time_unix_ns,
        });
    }
    Ok(())
}

/// Counts the bytes read through it: what the decoder consumed.
struct CountingReader<R: Read> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The payload bytes of `state`: what a snapshot stores, and what "the
/// same state, byte for byte" means in tests.
pub fn encode_state(state: &State) -> Result<Vec<u8>, SnapshotFormatError> {
    let mut out = bincode::serde::encode_to_vec(state, PAYLOAD_CONFIG)
        .map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    if !state.objects.is_empty() {
        out.extend(
            bincode::serde::encode_to_vec(&state.objects, PAYLOAD_CONFIG)
                .map_err(|e| SnapshotFormatError::Encode(e.to_string()))?,
        );
    }
    Ok(out)
}

/// The version a snapshot of `state` is written in.
fn version_for(state: &State) -> u16 {
    if state.objects.is_empty() {
        SNAPSHOT_VERSION
    } else {
        SNAPSHOT_VERSION_OBJECTS
    }
}

/// Writes a whole snapshot of `state` to `out`: a placeholder header, the
/// payload streamed through a checksum, then the real header over the
/// placeholder. `out` must be positioned at 0 and seekable.
pub fn encode_to<W: Write + io::Seek>(
    out: &mut W,
    state: &State,
    chain_crc: u32,
) -> Result<SnapshotHeader, SnapshotFormatError> {
    out.write_all(&[0u8; SNAPSHOT_HEADER_BYTES])?;
    let (crc, bytes) = write_payload(&mut *out, state)?;
    let header = SnapshotHeader {
        version: version_for(state),
        chain_crc,
        seq: state.last_seq,
        time_unix_ns: state.last_time_unix_ns,
        payload_len: bytes,
        payload_crc: crc,
    };
    out.seek(io::SeekFrom::Start(0))?;
    out.write_all(&header.encode())?;
    Ok(header)
}

/// Streams the payload into `out`; returns its CRC-32 and length.
fn write_payload<W: Write>(out: W, state: &State) -> Result<(u32, u64), SnapshotFormatError> {
    let mut counting = ChecksumWriter {
        inner: io::BufWriter::with_capacity(1 << 20, out),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    bincode::serde::encode_into_std_write(state, &mut counting, PAYLOAD_CONFIG)
        .map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    if !state.objects.is_empty() {
        bincode::serde::encode_into_std_write(&state.objects, &mut counting, PAYLOAD_CONFIG)
            .map_err(|e| SnapshotFormatError::Encode(e.to_string()))?;
    }
    counting.inner.flush()?;
    Ok((counting.crc.finalize(), counting.bytes))
}

struct ChecksumWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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
    use crate::events::{Actor, Entry, Event};
    use crate::oci::{Digest, RepoName, Tag};

    fn state() -> State {
        let mut s = State::default();
        let repo = RepoName::parse("a/b").unwrap();
        let digest = Digest::sha256_of(b"m");
        s.apply(
            1,
            10,
            &Entry {
                actor: Actor::system(),
                events: vec![
                    Event::ManifestPut {
                        repo: repo.clone(),
                        digest: digest.clone(),
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        body: bytes::Bytes::from_static(b"{}"),
                        blobs: vec![],
                        manifests: vec![],
                        subject: None,
                        artifact_type: None,
                    },
                    Event::TagSet {
                        repo,
                        tag: Tag::parse("v1").unwrap(),
                        digest,
                        previous: None,
                    },
                ],
            },
        );
        s
    }

    fn encoded(state: &State) -> Vec<u8> {
        let mut out = io::Cursor::new(Vec::new());
        encode_to(&mut out, state, 0xdead_beef).unwrap();
        out.into_inner()
    }

    #[test]
    fn round_trip() {
        let s = state();
        let bytes = encoded(&s);
        let (header, back) = decode(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(header.seq, 1);
        assert_eq!(header.time_unix_ns, 10);
        assert_eq!(header.chain_crc, 0xdead_beef);
        assert_eq!(&bytes[SNAPSHOT_HEADER_BYTES..], encode_state(&s).unwrap());
    }

    #[test]
    fn an_object_index_makes_a_version_2_snapshot() {
        let mut s = state();
        assert_eq!(SnapshotHeader::decode(&encoded(&s)).unwrap().version, 1);
        let digest = crate::oci::Digest::sha256_of(b"x");
        s.objects
            .blobs
            .insert(digest, "p/blobs/0123456789abcdef0123456789abcdef".into());
        s.objects.multiparts.insert(
            "fedcba9876543210fedcba9876543210".into(),
            crate::projection::OpenMultipart {
                key: "p/blobs/fedcba9876543210fedcba9876543210".into(),
                multipart: "mp".into(),
                parts: vec![crate::projection::StoredPart {
                    number: 1,
                    length: 5,
                    etag: "e".into(),
                }],
                started_unix_ns: 7,
            },
        );
        let bytes = encoded(&s);
        let (header, back) = decode(&bytes).unwrap();
        assert_eq!(header.version, SNAPSHOT_VERSION_OBJECTS);
        assert_eq!(back, s);
        let (_, read) = decode_by_reading(&bytes).unwrap();
        assert_eq!(read, s);
    }

    #[test]
    fn every_flip_and_every_cut_is_detected() {
        let bytes = encoded(&state());
        for i in 0..bytes.len() {
            let mut c = bytes.clone();
            c[i] ^= 0x04;
            assert!(decode(&c).is_err(), "flip at {i} undetected");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} undetected");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer),
            Err(SnapshotFormatError::Length { .. })
        ));
    }

    /// [`check_read`] then [`decode_read`], as `snapshot::load` does.
    fn decode_by_reading(bytes: &[u8]) -> Result<(SnapshotHeader, State), SnapshotFormatError> {
        let header = check_read(&mut &bytes[..], bytes.len() as u64)?;
        let state = decode_read(&header, &bytes[SNAPSHOT_HEADER_BYTES..])?;
        Ok((header, state))
    }

    #[test]
    fn reading_agrees_with_decoding_the_bytes() {
        let bytes = encoded(&state());
        let (header, state) = decode_by_reading(&bytes).unwrap();
        let (decoded_header, decoded_state) = decode(&bytes).unwrap();
        assert_eq!(header, decoded_header);
        assert_eq!(state, decoded_state);
        for i in 0..bytes.len() {
            let mut c = bytes.clone();
            c[i] ^= 0x04;
            assert!(decode_by_reading(&c).is_err(), "flip at {i} undetected");
        }
        for cut in 0..bytes.len() {
            let cut = &bytes[..cut];
            let read = decode_by_reading(cut).map(|_| ()).unwrap_err().to_string();
            assert_eq!(read, decode(cut).map(|_| ()).unwrap_err().to_string());
        }
    }
}
