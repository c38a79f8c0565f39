//! `ferroctl restore-from`: a data directory rebuilt from the archive, as
//! of its end or of a point (`--at SEQ|TIME`).
//!
//! Every piece up to the point is downloaded once and verified (checksums,
//! continuity, chain) while its records are written into new segments
//! under `<data>/log.restoring/`, which becomes `<data>/log/` only when
//! all of it verified: a failed restore leaves no log behind, never one
//! with a hole. Then the newest archived snapshot at or before the point
//! (checked, and its chain checksum matched against the record it claims)
//! and, when the archive carries blobs, every blob (its digest checked),
//! those of their own and those in packs.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::pack;
use super::read::{self, ReadError};
use super::store::{
    parse_numbered, parse_pack_name, snapshot_name, ArchiveStore, StoreError, BLOBS_DIR, PACKS_DIR,
    SNAPSHOTS_DIR, SNAPSHOT_SUFFIX,
};
use crate::blobs::{new_upload_id, BlobStore, OneShotStaging, StagingWriter};
use crate::datadir::{DataDir, Layout};
use crate::fsutil::fsync_dir;
use crate::log::format::{SegmentHeader, FORMAT_VERSION};
use crate::log::segment::segment_file_name;
use crate::replay::AsOf;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_time_unix_ns: u64,
    pub records: u64,
    pub pieces: u64,
    pub piece_bytes: u64,
    pub segments: u64,
    pub snapshot_seq: Option<u64>,
    pub blobs: u64,
    pub blob_bytes: u64,
}

/// Segments being written from verified records.
struct SegmentSink {
    dir: PathBuf,
    segment_bytes_max: u64,
    file: Option<(std::fs::File, PathBuf, u64)>,
    segments: u64,
}

impl SegmentSink {
    fn push(&mut self, seq: u64, prev_crc: u32, bytes: &[u8]) -> std::io::Result<()> {
        let full = self
            .file
            .as_ref()
            .is_some_and(|(_, _, len)| *len >= self.segment_bytes_max);
        if full || self.file.is_none() {
            self.seal()?;
            let path = self.dir.join(segment_file_name(seq));
            let mut file = std::fs::File::create_new(&path)?;
            let header = SegmentHeader {
                version: FORMAT_VERSION,
                first_seq: seq,
                prev_crc,
            }
            .encode();
            file.write_all(&header)?;
            self.file = Some((file, path, header.len() as u64));
            self.segments += 1;
        }
        let (file, _, len) = self.file.as_mut().expect("opened above");
        file.write_all(bytes)?;
        *len += bytes.len() as u64;
        Ok(())
    }

    fn seal(&mut self) -> std::io::Result<()> {
        if let Some((file, _, _)) = self.file.take() {
            file.sync_all()?;
        }
        Ok(())
    }
}

/// Rebuilds `data_dir` (empty or absent) from `store`, as of `at`.
pub async fn restore(
    store: &ArchiveStore,
    data_dir: &Path,
    at: Option<AsOf>,
    segment_bytes_max: u64,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<RestoreReport, RestoreError> {
    let data = DataDir::open(data_dir).map_err(|e| RestoreError::Refused(e.to_string()))?;
    let layout = data.layout();
    let log_dir = layout.log_dir();
    let has_files = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if has_files(&log_dir) || has_files(&layout.snapshots_dir()) {
        return Err(RestoreError::Refused(format!(
            "{} already holds a log or snapshots: restore into a new directory",
            data_dir.display()
        )));
    }
    let pieces = read::list_pieces(store).await?;
    let Some(first) = pieces.first() else {
        return Err(RestoreError::Refused(format!(
            "the archive {} holds no log",
            store.url()
        )));
    };
    let first_seq = first.first_seq;
    let snapshots: Vec<u64> = store
        .list(SNAPSHOTS_DIR, None)
        .await?
        .iter()
        .filter_map(|l| parse_numbered(&l.name, SNAPSHOTS_DIR, SNAPSHOT_SUFFIX))
        .collect();
    let staging = data_dir.join("log.restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    let mut sink = SegmentSink {
        dir: staging.clone(),
        segment_bytes_max: segment_bytes_max.max(4096),
        file: None,
        segments: 0,
    };
    // The checksum of each record a snapshot claims to follow.
    let mut snapshot_crcs = std::collections::BTreeMap::new();
    let mut written = 0u64;
    let walked = read::walk(store, &pieces, None, &mut |r| {
        let past = match at {
            Some(AsOf::Seq(s)) => r.seq > s,
            Some(AsOf::TimeUnixNs(t)) => r.time_unix_ns > t,
            Some(AsOf::End) | None => false,
        };
        if past {
            return Ok(ControlFlow::Break(()));
        }
        sink.push(r.seq, r.prev_crc, r.bytes)
            .map_err(|e| format!("writing {}: {e}", staging.display()))?;
        if snapshots.contains(&r.seq) {
            snapshot_crcs.insert(r.seq, r.crc);
        }
        written += 1;
        if written.is_multiple_of(100_000) {
            progress("records", written);
        }
        Ok(ControlFlow::Continue(()))
    })
    .await;
    let walked = match walked.and_then(|w| {
        sink.seal()
            .map(|()| w)
            .map_err(|e| ReadError::Other(e.to_string()))
    }) {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    if let Some(AsOf::Seq(s)) = at {
        if walked.last_seq < s {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(RestoreError::Refused(format!(
                "the archive ends at sequence {}, before {s}",
                walked.last_seq
            )));
        }
    }
    if walked.records == 0 {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(RestoreError::Refused(
            "no archived record is at or before the point asked for".into(),
        ));
    }
    // The newest snapshot the restored log reaches.
    let mut snapshot_seq = None;
    let snapshots_dir = layout.snapshots_dir();
    if let Some((&seq, &crc)) = snapshot_crcs.range(..=walked.last_seq).next_back() {
        let name = snapshot_name(seq);
        let bytes = store.get(&name).await?;
        let header = crate::snapshot::format::check(&bytes)
            .map_err(|e| RestoreError::Refused(format!("corrupt archive object {name}: {e}")))?;
        if header.seq != seq || header.chain_crc != crc {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(RestoreError::Refused(format!(
                "corrupt archive object {name}: it says sequence {} with chain checksum {:#010x}, the log's record {seq} has {crc:#010x}",
                header.seq, header.chain_crc
            )));
        }
        std::fs::create_dir_all(&snapshots_dir).map_err(io_err(&snapshots_dir))?;
        let path = snapshots_dir.join(crate::snapshot::snapshot_file_name(seq));
        crate::fsutil::write_atomic(&path, &bytes).map_err(io_err(&path))?;
        snapshot_seq = Some(seq);
    } else if first_seq > 1 {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(RestoreError::Refused(format!(
            "the archive's log starts at sequence {first_seq} and it holds no snapshot from which to replay it"
        )));
    }
    // Blobs before the log: a data directory whose log names a blob it
    // lacks is never produced (a corrupt blob leaves no log behind).
    let (blobs, blob_bytes) = match restore_blobs(store, &layout, progress).await {
        Ok(restored) => restored,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // All verified: the log goes in place.
    std::fs::rename(&staging, &log_dir).map_err(io_err(&log_dir))?;
    fsync_dir(&log_dir).map_err(io_err(&log_dir))?;
    fsync_dir(data_dir).map_err(io_err(data_dir))?;
    drop(data);
    Ok(RestoreReport {
        first_seq,
        last_seq: walked.last_seq,
        last_time_unix_ns: walked.last_time_unix_ns,
        records: walked.records,
        pieces: walked.pieces,
        piece_bytes: walked.bytes,
        segments: sink.segments,
        snapshot_seq,
        blobs,
        blob_bytes,
    })
}

/// Every blob the archive carries, into the data directory's blob store,
/// each checked against its digest: the objects of their own, then the
/// blobs of every pack. Returns (blobs, bytes) written.
async fn restore_blobs(
    store: &ArchiveStore,
    layout: &Layout,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<(u64, u64), RestoreError> {
    let blobs = BlobStore::new(layout);
    let (mut count, mut total) = (0, 0);
    for l in store.list(BLOBS_DIR, None).await? {
        let Some(digest) = blob_digest(&l.name) else {
            continue;
        };
        let (mut writer, staging) = open_staging(&blobs, &digest)?;
        let mut hasher = digest.algorithm().hasher();
        let read = store
            .get_each(&l.name, |chunk| {
                hasher.update(chunk);
                writer.write(chunk)
            })
            .await;
        let actual = hasher.finish();
        let checked = match read {
            Ok(bytes) if actual == digest => Ok(bytes),
            Ok(_) => Err(RestoreError::Refused(format!(
                "corrupt archive object {}: its bytes hash to {actual}",
                l.name
            ))),
            Err(e) => Err(e.into()),
        };
        let bytes = match checked {
            Ok(bytes) => bytes,
            Err(e) => {
                drop(writer);
                let _ = std::fs::remove_file(&*staging);
                return Err(e);
            }
        };
        blobs
            .commit_staging(writer, &digest)
            .map_err(io_err(&staging))?;
        count += 1;
        total += bytes;
        progress("blobs", count);
    }
    for l in store.list(PACKS_DIR, None).await? {
        if parse_pack_name(&l.name).is_none() {
            continue;
        }
        let bytes = store.get(&l.name).await?;
        // Verified whole before any of its blobs is written.
        let entries = pack::verify(&bytes, &mut |_, _| Ok(())).map_err(|e| {
            RestoreError::Refused(format!("corrupt archive object {}: {e}", l.name))
        })?;
        for e in entries {
            if blobs.blob_path(&e.digest).exists() {
                continue;
            }
            let blob = &bytes[e.range.start as usize..e.range.end as usize];
            let (mut writer, staging) = open_staging(&blobs, &e.digest)?;
            writer.write(blob).map_err(io_err(&staging))?;
            blobs
                .commit_staging(writer, &e.digest)
                .map_err(io_err(&staging))?;
            count += 1;
            total += blob.len() as u64;
            progress("blobs", count);
        }
    }
    Ok((count, total))
}

/// A staging file for `digest` in the store, as a one-shot upload makes
/// one: [`BlobStore::commit_staging`] then fsyncs it, renames it into
/// place and syncs the directories, exactly as for a pushed blob.
fn open_staging(
    blobs: &BlobStore,
    digest: &crate::oci::Digest,
) -> Result<(StagingWriter, OneShotStaging), RestoreError> {
    let staging = blobs.one_shot_staging_path(digest, &new_upload_id());
    let writer = blobs
        .open_one_shot_staging(&staging)
        .map_err(io_err(&staging))?;
    Ok((writer, staging))
}

/// The digest of `blobs/sha256/<hex>`, for a well-formed name.
pub fn blob_digest(name: &str) -> Option<crate::oci::Digest> {
    let rest = name.strip_prefix(BLOBS_DIR)?.strip_prefix('/')?;
    let (algorithm, hex) = rest.split_once('/')?;
    crate::oci::Digest::parse(&format!("{algorithm}:{hex}")).ok()
}
