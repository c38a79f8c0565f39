//! Upload staging files made to agree with the log after a restart, before
//! the registry serves: each open upload's file must hold exactly the
//! bytes its logged chunks acknowledged, under its own name only.
//!
//! What a crash can leave, and what is done (the closing step of a session
//! links its staging file into `blobs/` and removes the staging name only
//! after the completion is logged, see `blobs`):
//! - bytes past the last logged chunk (a chunk or a closing request whose
//!   entry never made it): cut off, they were never acknowledged;
//! - a staging file that is also a blob's name (the closing step linked it
//!   and the power went before its entry was logged): the upload gets a
//!   private copy of its acknowledged bytes, so that resuming it never
//!   writes through to the blob; the client's retry of the closing request
//!   then finishes the upload;
//! - fewer bytes than acknowledged: the bytes are really gone; the upload
//!   is cancelled on the record (`StagingLost`) with a warning;
//! - a staging file no open upload owns (its upload completed or was
//!   cancelled before the power went, or a copy cut short): removed.

use std::collections::HashSet;
use std::io;

use crate::blobs::{is_upload_id, link_count, BlobStore};
use crate::commands::Command;
use crate::events::{Actor, CancelReason};
use crate::log::{LogWriter, SubmitError};
use crate::projection::State;

/// What [`reconcile_uploads`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Open uploads whose file was cut back to the acknowledged size.
    pub cut: Vec<String>,
    /// Open uploads whose file shared its bytes with a blob and got a
    /// private copy.
    pub unshared: Vec<String>,
    /// Open uploads whose file had fewer bytes than acknowledged:
    /// cancelled (upload id, acknowledged, found).
    pub lost: Vec<(String, u64, u64)>,
    /// Staging files no open upload owns, removed.
    pub orphans_removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("upload staging files: {0}")]
    Io(#[from] io::Error),
    #[error("cancelling an upload whose bytes are gone: {0}")]
    Writer(#[from] SubmitError),
}

/// Reconciles every open upload's staging file with the log (see the
/// module's comment); logs what it changed.
pub async fn reconcile_uploads(
    state: &parking_lot::RwLock<State>,
    store: &BlobStore,
    writer: &LogWriter,
) -> Result<ReconcileReport, ReconcileError> {
    // Each upload with the first byte its staging file must hold: bytes
    // before it are parts of its multipart upload in an object store
    // (none on the filesystem). An upload whose every byte is in parts
    // needs no staging file.
    let uploads: Vec<(String, u64, u64)> = {
        let state = state.read();
        state
            .uploads
            .iter()
            .map(|(id, u)| (id.clone(), u.size, state.objects.parts_bytes(id)))
            .collect()
    };
    let mut report = ReconcileReport::default();
    let staged = uploads
        .iter()
        .filter(|(_, size, in_parts)| *in_parts == 0 || size > in_parts)
        .map(|(id, size, _)| (id, size));
    for (id, size) in staged {
        let path = store.staging_path(id);
        let (len, links) = match std::fs::metadata(&path) {
            Ok(m) => (m.len(), link_count(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 1),
            Err(e) => return Err(e.into()),
        };
        if len < *size {
            tracing::warn!(upload = %id, acknowledged = size, found = len, "upload staging file lost acknowledged bytes; cancelling it");
            report.lost.push((id.clone(), *size, len));
            continue;
        }
        if links > 1 {
            let store = store.clone();
            let (p, s) = (path.clone(), *size);
            tokio::task::spawn_blocking(move || store.restore_staging(&p, s))
                .await
                .map_err(io::Error::other)??;
            tracing::info!(upload = %id, acknowledged = size, "gave an upload whose closing step was cut short its own copy of its acknowledged bytes");
            report.unshared.push(id.clone());
        } else if len > *size {
            let store = store.clone();
            let (p, s) = (path.clone(), *size);
            tokio::task::spawn_blocking(move || store.restore_staging(&p, s))
                .await
                .map_err(io::Error::other)??;
            tracing::info!(upload = %id, acknowledged = size, found = len, "cut an upload back to its last logged chunk");
            report.cut.push(id.clone());
        }
    }
    for (id, _, _) in &report.lost {
        let _ = std::fs::remove_file(store.staging_path(id));
        writer
            .submit(
                Actor::system(),
                Command::CancelUpload {
                    upload: id.clone(),
                    reason: CancelReason::StagingLost,
                },
            )
            .await?;
    }
    let live: HashSet<&String> = uploads.iter().map(|(id, _, _)| id).collect();
    for entry in std::fs::read_dir(store.uploads_dir())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(is_upload_id(&name) && live.contains(&name)) {
            tracing::info!(file = %entry.path().display(), "removing an orphan staging file");
            // Only this name goes: a blob linked to the same file keeps it.
            let _ = std::fs::remove_file(entry.path());
            report.orphans_removed += 1;
        }
    }
    Ok(report)
}
