//! Writer epochs: one writer per archive. A server taking the archive
//! writes `epochs/<N+1>.epoch` (N the newest it finds) create-if-absent,
//! reads it back, and before every shipment checks that its epoch object
//! is still its own and that no `epochs/<N+2>.epoch` exists. A newer
//! writer therefore fences an older one at its next shipment.
//!
//! Where the store enforces create-if-absent (the `file://` store, AWS S3,
//! MinIO, R2) two writers racing for the same epoch cannot both get it.
//! Where it does not (Garage 2.5.0 overwrites), the read-back and the
//! check before each shipment detect the loser; what remains is the window
//! between a check and the put that follows it (README: "What a store
//! without conditional writes guarantees").
//!
//! Object layout (little-endian; `log-format/ARCHIVE.md`):
//!
//! ```text
//! offset  bytes  field
//!      0      8  magic "FERROEPC"
//!      8      4  version (1)
//!     12      8  epoch
//!     20      8  taken_unix_ns
//!     28      8  from_seq      the archive's last sequence number when taken
//!     36     16  writer id     random, one per server start
//!     52      4  CRC-32 (IEEE) of bytes 0..52
//! ```

use bytes::Bytes;

use super::store::{
    epoch_name, parse_numbered, ArchiveStore, StoreError, EPOCHS_DIR, EPOCH_SUFFIX,
};

pub const EPOCH_MAGIC: [u8; 8] = *b"FERROEPC";
pub const EPOCH_VERSION: u32 = 1;
const VERSION_AT: usize = 8;
const EPOCH_AT: usize = VERSION_AT + 4;
const TAKEN_AT: usize = EPOCH_AT + 8;
const FROM_AT: usize = TAKEN_AT + 8;
const WRITER_AT: usize = FROM_AT + 8;
const CRC_AT: usize = WRITER_AT + 16;
pub const EPOCH_OBJECT_BYTES: usize = CRC_AT + 4;

/// A writer epoch, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub epoch: u64,
    pub taken_unix_ns: u64,
    pub from_seq: u64,
    pub writer: [u8; 16],
}

impl Epoch {
    pub fn encode(&self) -> [u8; EPOCH_OBJECT_BYTES] {
        let mut b = [0u8; EPOCH_OBJECT_BYTES];
        b[..VERSION_AT].copy_from_slice(&EPOCH_MAGIC);
        b[VERSION_AT..EPOCH_AT].copy_from_slice(&EPOCH_VERSION.to_le_bytes());
        b[EPOCH_AT..TAKEN_AT].copy_from_slice(&self.epoch.to_le_bytes());
        b[TAKEN_AT..FROM_AT].copy_from_slice(&self.taken_unix_ns.to_le_bytes());
        b[FROM_AT..WRITER_AT].copy_from_slice(&self.from_seq.to_le_bytes());
        b[WRITER_AT..CRC_AT].copy_from_slice(&self.writer);
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes an epoch object; the error names what is wrong.
    pub fn decode(b: &[u8]) -> Result<Epoch, String> {
        if b.len() != EPOCH_OBJECT_BYTES {
            return Err(format!(
                "expected {EPOCH_OBJECT_BYTES} bytes, found {}",
                b.len()
            ));
        }
        if b[..VERSION_AT] != EPOCH_MAGIC {
            return Err("bad magic (expected FERROEPC)".into());
        }
        let crc = crc32fast::hash(&b[..CRC_AT]);
        let stored = u32::from_le_bytes(b[CRC_AT..].try_into().expect("4 bytes"));
        if crc != stored {
            return Err(format!(
                "checksum mismatch at offset {CRC_AT}: stored {stored:#010x}, computed {crc:#010x}"
            ));
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let version = u32::from_le_bytes(b[VERSION_AT..EPOCH_AT].try_into().expect("4 bytes"));
        if version != EPOCH_VERSION {
            return Err(format!("unsupported epoch version {version}"));
        }
        Ok(Epoch {
            epoch: u64_at(EPOCH_AT),
            taken_unix_ns: u64_at(TAKEN_AT),
            from_seq: u64_at(FROM_AT),
            writer: b[WRITER_AT..CRC_AT].try_into().expect("16 bytes"),
        })
    }

    pub fn writer_hex(&self) -> String {
        self.writer.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Why this server may not write into the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error("another writer took epoch {epoch} of the archive (writer {writer}); this server no longer ships to it")]
    Superseded { epoch: u64, writer: String },
    #[error("{0}")]
    Refused(String),
}

/// A failure while taking or checking the epoch.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error(transparent)]
    Fenced(#[from] FenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The newest epoch in the archive, if any (its number only).
pub async fn newest(store: &ArchiveStore) -> Result<Option<u64>, StoreError> {
    let listed = store.list(EPOCHS_DIR, None).await?;
    Ok(listed
        .iter()
        .filter_map(|l| parse_numbered(&l.name, EPOCHS_DIR, EPOCH_SUFFIX))
        .max())
}

/// Reads one epoch object.
pub async fn read(store: &ArchiveStore, epoch: u64) -> Result<Option<Epoch>, StoreError> {
    let name = epoch_name(epoch);
    match store.get(&name).await {
        Ok(bytes) => Epoch::decode(&bytes)
            .map(Some)
            .map_err(|reason| StoreError::Failed { key: name, reason }),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Takes the next epoch for `writer`, with the archive's last sequence
/// number `from_seq` recorded in it.
pub async fn take(
    store: &ArchiveStore,
    writer: [u8; 16],
    from_seq: u64,
    now_unix_ns: u64,
) -> Result<Epoch, EpochError> {
    let next = newest(store).await?.map_or(1, |n| n + 1);
    let mine = Epoch {
        epoch: next,
        taken_unix_ns: now_unix_ns,
        from_seq,
        writer,
    };
    match store
        .put_new(&epoch_name(next), Bytes::copy_from_slice(&mine.encode()))
        .await
    {
        Ok(()) => {}
        Err(StoreError::AlreadyExists(_)) => {
            return Err(FenceError::Refused(format!(
                "another writer took epoch {next} of the archive at the same time; this server does not ship to it"
            ))
            .into())
        }
        Err(e) => return Err(e.into()),
    }
    check(store, &mine).await?;
    Ok(mine)
}

/// Whether `mine` is still the archive's writer: its object holds its
/// writer id and no newer epoch exists. Two requests, sent together:
/// each looks at a condition of its own, both are answered before the
/// caller goes on, so their order changes nothing.
pub async fn check(store: &ArchiveStore, mine: &Epoch) -> Result<(), EpochError> {
    let next = epoch_name(mine.epoch + 1);
    let (own, newer) = tokio::join!(read(store, mine.epoch), store.exists(&next));
    match own? {
        Some(found) if found.writer == mine.writer => {}
        Some(found) => {
            return Err(FenceError::Superseded {
                epoch: found.epoch,
                writer: found.writer_hex(),
            }
            .into())
        }
        None => {
            return Err(FenceError::Refused(format!(
                "epoch object {} disappeared from the archive",
                epoch_name(mine.epoch)
            ))
            .into())
        }
    }
    if newer? {
        let writer = read(store, mine.epoch + 1)
            .await
            .ok()
            .flatten()
            .map(|e| e.writer_hex())
            .unwrap_or_default();
        return Err(FenceError::Superseded {
            epoch: mine.epoch + 1,
            writer,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_damage_is_refused() {
        let e = Epoch {
            epoch: 7,
            taken_unix_ns: 1_700_000_000_000_000_000,
            from_seq: 42,
            writer: [9; 16],
        };
        let b = e.encode();
        assert_eq!(Epoch::decode(&b).unwrap(), e);
        for at in 0..EPOCH_OBJECT_BYTES {
            let mut bad = b;
            bad[at] ^= 0x10;
            assert!(Epoch::decode(&bad).is_err(), "byte {at}");
        }
        assert!(Epoch::decode(&b[..10]).is_err());
    }

    #[tokio::test]
    async fn a_newer_writer_fences_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::archive::config::ArchiveConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        };
        let store = ArchiveStore::open(&config, &Default::default()).unwrap();
        let first = take(&store, [1; 16], 0, 1).await.unwrap();
        assert_eq!(first.epoch, 1);
        check(&store, &first).await.unwrap();
        let second = take(&store, [2; 16], 0, 2).await.unwrap();
        assert_eq!(second.epoch, 2);
        let fenced = check(&store, &first).await.unwrap_err();
        assert!(
            matches!(
                fenced,
                EpochError::Fenced(FenceError::Superseded { epoch: 2, .. })
            ),
            "{fenced}"
        );
        check(&store, &second).await.unwrap();
    }
}
