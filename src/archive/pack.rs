//! Packs: the small blobs of one shipment in one archive object.
//!
//! With blobs on the filesystem the archive carries every blob a record
//! links. One object per blob meant one store request (and on S3 one
//! billed `PUT`) per pushed config blob: about as many requests as pushes.
//! Blobs under [`PACK_BLOB_BYTES_MAX`] are put together instead, in a pack
//! under `packs/<first seq>-<16 hex>.pack` (the first sequence number of
//! the piece they go out before, and a random part: a retried shipment
//! writes a new pack, never over an old one).
//!
//! Layout (every integer unsigned little-endian; `log-format/ARCHIVE.md`):
//!
//! ```text
//! offset  bytes  field
//! 0       8      magic "FERROPAK"
//! 8       2      version (1)
//! 10      2      reserved, 0
//! 12      4      count: blobs in the pack
//! 16      4      index_bytes: length of the index that follows
//! 20      …      index: count × { u8 n, n bytes digest ("sha256:<hex>"), u64 length }
//! 20+i    4      CRC-32 of bytes [0, 20 + index_bytes)
//! 24+i    …      the blobs' bytes, back to back, in index order
//! ```
//!
//! The index's checksum covers what a reader needs to find a blob; each
//! blob's bytes are checked against its digest when read. A pack's size
//! is exactly `24 + index_bytes + Σ length`.

use std::ops::Range;

use crate::oci::Digest;

pub const MAGIC: [u8; 8] = *b"FERROPAK";
pub const VERSION: u16 = 1;
/// Bytes before the index: magic, version, reserved, count, index_bytes.
pub const HEAD_BYTES: usize = 20;
/// Blobs smaller than this go into packs; larger ones are objects of
/// their own (where a `HEAD` first can save the upload).
pub const PACK_BLOB_BYTES_MAX: u64 = 1 << 20;
/// A shipment's packs are cut at about this size (the memory it holds).
pub const PACK_BYTES_MAX: usize = 32 << 20;

/// One blob of a pack: where its bytes are in the pack object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackEntry {
    pub digest: Digest,
    /// Byte range within the pack object.
    pub range: Range<u64>,
}

/// Why a pack does not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("not a pack (bad magic)")]
    Magic,
    #[error("pack version {0} is not known to this ferro")]
    Version(u16),
    #[error("pack index is damaged: {0}")]
    Index(String),
    #[error("pack is {actual} bytes, its index says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("blob {digest} in the pack hashes to {actual}")]
    Blob { digest: Digest, actual: String },
}

/// Builds a pack in memory.
#[derive(Debug, Default)]
pub struct PackBuilder {
    index: Vec<u8>,
    count: u32,
    data: Vec<u8>,
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        PackBuilder::default()
    }

    /// Adds `bytes`, the whole blob `digest` (the caller read them from
    /// the blob store, where they were checked when committed).
    pub fn push(&mut self, digest: &Digest, bytes: &[u8]) {
        let name = digest.to_string();
        debug_assert!(name.len() <= u8::MAX as usize);
        self.index.push(name.len() as u8);
        self.index.extend_from_slice(name.as_bytes());
        self.index
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.data.extend_from_slice(bytes);
        self.count += 1;
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes the pack will have.
    pub fn len_bytes(&self) -> usize {
        HEAD_BYTES + self.index.len() + 4 + self.data.len()
    }

    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len_bytes());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.index);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }
}

/// From the first [`HEAD_BYTES`] of a pack: how many bytes the head,
/// index and its checksum take (what [`read_index`] needs).
pub fn index_end(head: &[u8]) -> Result<u64, PackError> {
    if head.len() < HEAD_BYTES || head[..8] != MAGIC {
        return Err(PackError::Magic);
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        return Err(PackError::Version(version));
    }
    let index_bytes = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    Ok(HEAD_BYTES as u64 + u64::from(index_bytes) + 4)
}

/// The entries of a pack from its first [`index_end`] bytes (or more),
/// the index's checksum checked.
pub fn read_index(bytes: &[u8]) -> Result<Vec<PackEntry>, PackError> {
    let end = index_end(bytes)? as usize;
    if bytes.len() < end {
        return Err(PackError::Index(format!(
            "{} bytes given, the index ends at {end}",
            bytes.len()
        )));
    }
    let stored = u32::from_le_bytes(bytes[end - 4..end].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..end - 4]) != stored {
        return Err(PackError::Index("checksum mismatch".into()));
    }
    let count = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let mut index = &bytes[HEAD_BYTES..end - 4];
    let mut at = end as u64;
    // The count is checksummed, but never trusted for an allocation.
    let mut entries = Vec::with_capacity((count as usize).min(index.len() / 9));
    for i in 0..count {
        let damaged = || PackError::Index(format!("entry {i} runs past the index"));
        let (&n, rest) = index.split_first().ok_or_else(damaged)?;
        let n = usize::from(n);
        if rest.len() < n + 8 {
            return Err(damaged());
        }
        let name = std::str::from_utf8(&rest[..n])
            .map_err(|_| PackError::Index(format!("entry {i}: digest is not text")))?;
        let digest = Digest::parse(name)
            .map_err(|e| PackError::Index(format!("entry {i}: {name:?}: {e}")))?;
        let len = u64::from_le_bytes(rest[n..n + 8].try_into().expect("8 bytes"));
        let next = at
            .checked_add(len)
            .ok_or_else(|| PackError::Index(format!("entry {i}: length {len} overflows")))?;
        entries.push(PackEntry {
            digest,
            range: at..next,
        });
        at = next;
        index = &rest[n + 8..];
    }
    if !index.is_empty() {
        return Err(PackError::Index(format!(
            "{} bytes after the last of {count} entries",
            index.len()
        )));
    }
    Ok(entries)
}

/// The size a pack with these entries has.
pub fn expected_len(entries: &[PackEntry], index_end: u64) -> u64 {
    entries.last().map_or(index_end, |e| e.range.end)
}

/// Checks a whole pack (index, size, every blob against its digest) and
/// calls `each` with every blob's digest and bytes, in order.
pub fn verify(
    bytes: &[u8],
    each: &mut dyn FnMut(&Digest, &[u8]) -> std::io::Result<()>,
) -> Result<Vec<PackEntry>, VerifyError> {
    let entries = read_index(bytes)?;
    let expected = expected_len(&entries, index_end(bytes)?);
    if expected != bytes.len() as u64 {
        return Err(PackError::Size {
            expected,
            actual: bytes.len() as u64,
        }
        .into());
    }
    for e in &entries {
        let blob = &bytes[e.range.start as usize..e.range.end as usize];
        let actual = e.digest.recompute(blob);
        if actual != e.digest {
            return Err(PackError::Blob {
                digest: e.digest.clone(),
                actual: actual.to_string(),
            }
            .into());
        }
        each(&e.digest, blob).map_err(VerifyError::Io)?;
    }
    Ok(entries)
}

/// A pack that does not verify, or a failure of what its blobs were
/// handed to.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_of(blobs: &[&[u8]]) -> (Vec<u8>, Vec<Digest>) {
        let mut b = PackBuilder::new();
        let digests: Vec<Digest> = blobs.iter().map(|x| Digest::sha256_of(x)).collect();
        for (d, x) in digests.iter().zip(blobs) {
            b.push(d, x);
        }
        let len = b.len_bytes();
        let bytes = b.finish();
        assert_eq!(bytes.len(), len);
        (bytes, digests)
    }

    #[test]
    fn a_pack_reads_back_every_blob_in_order() {
        let blobs: [&[u8]; 4] = [b"config one", b"", b"a layer", &[7u8; 5000]];
        let (bytes, digests) = pack_of(&blobs);
        let mut seen = Vec::new();
        let entries = verify(&bytes, &mut |d, b| {
            seen.push((d.clone(), b.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(entries.len(), 4);
        for ((e, d), b) in entries.iter().zip(&digests).zip(blobs) {
            assert_eq!(&e.digest, d);
            assert_eq!(&bytes[e.range.start as usize..e.range.end as usize], b);
        }
        assert_eq!(seen.len(), 4);
        // The index alone, as a ranged read gets it.
        let end = index_end(&bytes[..HEAD_BYTES]).unwrap() as usize;
        assert_eq!(read_index(&bytes[..end]).unwrap(), entries);
    }

    #[test]
    fn an_empty_pack_is_valid() {
        let (bytes, _) = pack_of(&[]);
        assert!(verify(&bytes, &mut |_, _| Ok(())).unwrap().is_empty());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (bytes, _) = pack_of(&[b"config", b"layer bytes"]);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                verify(&bad, &mut |_, _| Ok(())).is_err(),
                "a flip at byte {i} went unseen"
            );
        }
    }

    #[test]
    fn a_cut_or_extended_pack_is_refused() {
        let (bytes, _) = pack_of(&[b"config", b"layer bytes"]);
        for len in 0..bytes.len() {
            assert!(verify(&bytes[..len], &mut |_, _| Ok(())).is_err(), "{len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            verify(&longer, &mut |_, _| Ok(())),
            Err(VerifyError::Pack(PackError::Size { .. }))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_blobs_round_trip(blobs in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..12)) {
            let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
            let (bytes, digests) = pack_of(&refs);
            let mut seen = Vec::new();
            let entries = verify(&bytes, &mut |d, b| {
                seen.push((d.clone(), b.to_vec()));
                Ok(())
            }).unwrap();
            proptest::prop_assert_eq!(entries.len(), blobs.len());
            let expected: Vec<(Digest, Vec<u8>)> = digests.into_iter().zip(blobs).collect();
            proptest::prop_assert_eq!(seen, expected);
        }
    }
}
