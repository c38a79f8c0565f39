//! The operator's view of an archive: `ferroctl archive status` (what is
//! shipped, the writer epoch, snapshots, blobs; with a data directory its
//! shipping cursor and lag) and `ferroctl archive verify` (every object
//! downloaded once: pieces' checksums and chain, snapshots' checksums and
//! chain checksum, epochs, blobs' digests, packs' indexes).

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use sha2::Digest as _;

use super::epoch::{self, Epoch};
use super::pack;
use super::read::{self, ReadError};
use super::restore::blob_digest;
use super::store::{
    parse_numbered, parse_pack_name, ArchiveStore, StoreError, BLOBS_DIR, EPOCHS_DIR, EPOCH_SUFFIX,
    PACKS_DIR, SNAPSHOTS_DIR, SNAPSHOT_SUFFIX,
};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub url: String,
    pub pieces: u64,
    pub piece_bytes: u64,
    pub first_seq: Option<u64>,
    /// The last archived record (read back from the last piece).
    pub last_seq: Option<u64>,
    pub last_time_unix_ns: Option<u64>,
    pub snapshots: Vec<u64>,
    /// Blob objects of their own (`blobs/`).
    pub blobs: u64,
    /// Packs of small blobs (`packs/`).
    pub packs: u64,
    pub epoch: Option<EpochStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochStatus {
    pub epoch: u64,
    pub writer: String,
    pub taken_unix_ns: u64,
    pub from_seq: u64,
}

impl From<Epoch> for EpochStatus {
    fn from(e: Epoch) -> EpochStatus {
        EpochStatus {
            epoch: e.epoch,
            writer: e.writer_hex(),
            taken_unix_ns: e.taken_unix_ns,
            from_seq: e.from_seq,
        }
    }
}

/// Lists the archive and reads its last piece and newest epoch.
pub async fn status(store: &ArchiveStore) -> Result<Status, StoreError> {
    let pieces = read::list_pieces(store).await?;
    let mut status = Status {
        url: store.url().to_owned(),
        pieces: pieces.len() as u64,
        piece_bytes: pieces.iter().map(|p| p.size).sum(),
        first_seq: pieces.first().map(|p| p.first_seq),
        ..Status::default()
    };
    if let Some(last) = pieces.last() {
        let bytes = store.get(&last.name).await?;
        let mut time = 0;
        let (seq, _) = super::piece::verify(&last.name, last.first_seq, &bytes, None, &mut |r| {
            time = r.time_unix_ns;
            ControlFlow::Continue(())
        })
        .map_err(|e| StoreError::Failed {
            key: last.name.clone(),
            reason: e.to_string(),
        })?;
        status.last_seq = Some(seq);
        status.last_time_unix_ns = Some(time);
    }
    status.snapshots = store
        .list(SNAPSHOTS_DIR, None)
        .await?
        .iter()
        .filter_map(|l| parse_numbered(&l.name, SNAPSHOTS_DIR, SNAPSHOT_SUFFIX))
        .collect();
    status.blobs = store.list(BLOBS_DIR, None).await?.len() as u64;
    status.packs = store
        .list(PACKS_DIR, None)
        .await?
        .iter()
        .filter(|l| parse_pack_name(&l.name).is_some())
        .count() as u64;
    if let Some(n) = epoch::newest(store).await? {
        status.epoch = epoch::read(store, n).await?.map(EpochStatus::from);
    }
    Ok(status)
}

/// What `archive verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verified {
    pub pieces: u64,
    pub records: u64,
    pub bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub snapshots: u64,
    pub epochs: u64,
    /// Blobs checked: objects of their own and blobs in packs.
    pub blobs: u64,
    pub packs: u64,
    /// Every problem, each naming its object. Empty: the archive is sound.
    pub problems: Vec<String>,
}

/// Downloads every object once and checks it.
pub async fn verify(store: &ArchiveStore) -> Result<Verified, StoreError> {
    let mut out = Verified::default();
    let pieces = read::list_pieces(store).await?;
    out.first_seq = pieces.first().map(|p| p.first_seq);
    let snapshot_seqs: Vec<u64> = store
        .list(SNAPSHOTS_DIR, None)
        .await?
        .iter()
        .filter_map(|l| parse_numbered(&l.name, SNAPSHOTS_DIR, SNAPSHOT_SUFFIX))
        .collect();
    let mut crcs = BTreeMap::new();
    // After a bad piece, go on from the next one (unchained to it) so
    // that every damaged object is named, not only the first.
    let mut rest = &pieces[..];
    let mut start = None;
    while !rest.is_empty() {
        let walked = read::walk(store, rest, start, &mut |r| {
            if snapshot_seqs.contains(&r.seq) {
                crcs.insert(r.seq, r.crc);
            }
            Ok(ControlFlow::Continue(()))
        })
        .await;
        match walked {
            Ok(end) => {
                out.pieces += end.pieces;
                out.records += end.records;
                out.bytes += end.bytes;
                out.last_seq = end.last_seq.max(out.last_seq);
                rest = &[];
            }
            Err(ReadError::Corrupt(e)) => {
                let at = rest.iter().position(|p| p.name == e.name).unwrap_or(0);
                out.problems.push(format!("corrupt archive object {e}"));
                out.pieces += at as u64 + 1;
                rest = &rest[at + 1..];
                start = None;
            }
            Err(ReadError::Store(StoreError::NotFound(name))) => {
                out.problems.push(format!("missing archive object {name}"));
                let at = rest.iter().position(|p| p.name == name).unwrap_or(0);
                rest = &rest[at + 1..];
                start = None;
            }
            Err(ReadError::Store(e)) => return Err(e),
            Err(ReadError::Other(e)) => {
                out.problems.push(e);
                rest = &[];
            }
        }
    }
    for seq in &snapshot_seqs {
        let name = super::store::snapshot_name(*seq);
        let bytes = store.get(&name).await?;
        out.snapshots += 1;
        match crate::snapshot::format::check(&bytes) {
            Err(e) => out.problems.push(format!("corrupt archive object {name}: {e}")),
            Ok(h) if h.seq != *seq => out.problems.push(format!(
                "corrupt archive object {name}: its header says sequence {}",
                h.seq
            )),
            Ok(h) => match crcs.get(seq) {
                Some(crc) if *crc != h.chain_crc => out.problems.push(format!(
                    "corrupt archive object {name}: chain checksum {:#010x}, the log's record {seq} has {crc:#010x}",
                    h.chain_crc
                )),
                _ => {}
            },
        }
    }
    for l in store.list(EPOCHS_DIR, None).await? {
        if parse_numbered(&l.name, EPOCHS_DIR, EPOCH_SUFFIX).is_none() {
            continue;
        }
        out.epochs += 1;
        let bytes = store.get(&l.name).await?;
        if let Err(e) = Epoch::decode(&bytes) {
            out.problems
                .push(format!("corrupt archive object {}: {e}", l.name));
        }
    }
    for l in store.list(BLOBS_DIR, None).await? {
        let Some(digest) = blob_digest(&l.name) else {
            continue;
        };
        out.blobs += 1;
        let mut hasher = sha2::Sha256::new();
        store
            .get_each(&l.name, |chunk| {
                hasher.update(chunk);
                Ok(())
            })
            .await?;
        let actual = hex::encode(hasher.finalize());
        if actual != digest.hex() {
            out.problems.push(format!(
                "corrupt archive object {}: its bytes hash to sha256:{actual}",
                l.name
            ));
        }
    }
    for l in store.list(PACKS_DIR, None).await? {
        if parse_pack_name(&l.name).is_none() {
            continue;
        }
        out.packs += 1;
        let bytes = store.get(&l.name).await?;
        match pack::verify(&bytes, &mut |_, _| Ok(())) {
            Ok(entries) => out.blobs += entries.len() as u64,
            Err(e) => out
                .problems
                .push(format!("corrupt archive object {}: {e}", l.name)),
        }
    }
    Ok(out)
}
